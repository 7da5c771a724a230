//! The engine of one replica: the one authority for every credential, used by the gRPC service,
//! the bus consumer and the background loops.
//!
//! [`Engine`] is a facade: it owns every write and hands out none of its parts, and its methods
//! are all the service and the consumer call. The work is done in rooms, each named for what it
//! holds (docs/architecture.md draws them):
//!
//! - `refresh`: the read path and the refresh of every credential (need, single-flight, lease,
//!   re-check), over `cache` (the 1 s read cache), `flight` (the generic single-flight) and
//!   `write` (the one fenced write under a lease, also used by the code exchange);
//! - `fetch`: one function per credential kind, calling WeChat;
//! - `component`: a WeChat call with one of the tenant's tokens, retried once with the
//!   replacement when WeChat rejects the token;
//! - `authorizers` (records, revocation, profile), `exchange` (authorization codes, claimed in
//!   the store), `reconcile` (WeChat's authorizer list), `pre_auth` (the authorization URLs and
//!   their shared pre-auth code);
//! - `tickets` (store, watch, push requests, readiness), `schedule` (the proactive poller),
//!   `notices` (component notices, applied once);
//! - `recovery` and `memory`: recovery from a store that lost its state (see `recovery`);
//! - `credential` (the credential names and the token handed out), `shared` (the handles every
//!   room uses).
//!
//! A token request goes down through them: the facade → `refresh` → `cache`, `recovery` (the
//! store read) → `fetch` (WeChat) → `write` (the store). No room calls back into the facade. The
//! one recursion of the protocol — an authorizer token (and a reconcile, a re-list, a pre-auth
//! code) needs the component token — runs through `component::TokenSource`, which `refresh`
//! implements and hands down, so the rooms below it do not depend on it.

mod authorizers;
mod cache;
mod component;
mod credential;
mod exchange;
mod fetch;
mod flight;
mod memory;
mod notices;
mod pre_auth;
mod reconcile;
mod recovery;
mod refresh;
mod schedule;
mod shared;
mod tickets;
mod write;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wxhub_message::ComponentNotice;
use wxhub_runtime::{Tenant, TenantsHandle};
use wxhub_store::{AuthorizerRecord, Credentials, Ledger, Store};
use wxhub_wechat_api::WechatApi;

pub use authorizers::AuthorizerPage;
pub use credential::{Credential, TICKET_VALIDITY_MS, Token};
pub use notices::Applied;
pub use pre_auth::{AuthType, AuthorizationUrl, Offer, REDIRECT_PARAM, marker, valid_marker};
pub use reconcile::ReconcileSummary;

use crate::clock::Clock;
use crate::config::TokenControlConfig;
use crate::error::Error;
use authorizers::AuthorizerRecords;
use cache::Cache;
use exchange::{Exchange, ExchangeBy};
use fetch::Fetch;
use memory::Memory;
use notices::Notices;
use pre_auth::PreAuth;
use reconcile::Reconciler;
use recovery::Recovery;
use refresh::Tokens;
use schedule::Schedule;
use shared::Shared;
use tickets::Tickets;
use write::Writer;

/// What a JS-SDK page passes to `wx.config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsapiSignature {
    /// The account the ticket belongs to (WeChat requires the authorizer's appid).
    pub appid: String,
    pub nonce_str: String,
    pub timestamp: i64,
    pub signature: String,
    /// The signed URL (without its `#fragment`).
    pub url: String,
}

/// The engine of one replica.
pub struct Engine {
    store: Store,
    shared: Arc<Shared>,
    tokens: Arc<Tokens>,
    tickets: Arc<Tickets>,
    reconciler: Arc<Reconciler>,
    recovery: Arc<Recovery>,
    authorizers: Arc<AuthorizerRecords>,
    schedule: Arc<Schedule>,
    exchange: Arc<Exchange>,
    pre_auth: Arc<PreAuth>,
    notices: Notices,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("namespace", &self.store.namespace())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine on `store`, calling WeChat through `api` (`mp_base`: host of the
    /// authorization pages).
    pub fn new(
        store: Store,
        api: WechatApi,
        mp_base: &str,
        tenants: TenantsHandle,
        clock: Arc<dyn Clock>,
        cfg: TokenControlConfig,
    ) -> Arc<Self> {
        let store = store.with_create_time_skew(cfg.create_time_skew());
        let shared = Arc::new(Shared {
            creds: Credentials::new(store.clone()),
            auths: wxhub_store::Authorizers::new(store.clone()),
            api,
            tenants,
            clock,
            cache: Cache::new(cfg.cache_ttl_ms),
            memory: Memory::default(),
            cfg,
        });
        let s = || Arc::clone(&shared);
        let tickets = Arc::new(Tickets::new(s()));
        let reconciler = Arc::new(Reconciler::new(s()));
        let recovery = Arc::new(Recovery::new(
            s(),
            Arc::clone(&tickets),
            Arc::clone(&reconciler),
        ));
        let authorizers = Arc::new(AuthorizerRecords::new(s(), Arc::clone(&recovery)));
        let fetch = Fetch::new(
            s(),
            Arc::clone(&tickets),
            Arc::clone(&recovery),
            Arc::clone(&reconciler),
            Arc::clone(&authorizers),
        );
        let writer = Arc::new(Writer::new(s()));
        let tokens = Arc::new(Tokens::new(
            s(),
            Arc::clone(&recovery),
            Arc::clone(&authorizers),
            fetch,
            Arc::clone(&writer),
        ));
        let schedule = Arc::new(Schedule::new(s(), Arc::clone(&tokens)));
        let exchange = Arc::new(Exchange::new(
            s(),
            store.clone(),
            Arc::clone(&tokens),
            writer,
            Arc::clone(&authorizers),
        ));
        let pre_auth = Arc::new(PreAuth::new(s(), store.clone(), mp_base));
        let notices = Notices {
            s: s(),
            ledger: Ledger::new(store.clone()),
            tokens: Arc::clone(&tokens),
            tickets: Arc::clone(&tickets),
            reconciler: Arc::clone(&reconciler),
            authorizers: Arc::clone(&authorizers),
            exchange: Arc::clone(&exchange),
            pre_auth: Arc::clone(&pre_auth),
        };
        Arc::new(Self {
            store,
            shared,
            tokens,
            tickets,
            reconciler,
            recovery,
            authorizers,
            schedule,
            exchange,
            pre_auth,
            notices,
        })
    }

    /// The tenants (the service authenticates clients against them).
    pub(crate) fn tenants(&self) -> &TenantsHandle {
        &self.shared.tenants
    }

    /// Now, by the engine's clock (ms).
    pub(crate) fn now_ms(&self) -> i64 {
        self.shared.now_ms()
    }

    // ---------------------------------------------------------------- tokens

    /// A token of `cred` with at least `min_remaining_ms` of life (before its due time: any
    /// life left), refreshing if needed.
    pub async fn token(
        &self,
        tenant: &Arc<Tenant>,
        cred: &Credential,
        min_remaining_ms: i64,
        deadline: Instant,
    ) -> Result<Token, Error> {
        self.tokens
            .read_or_refresh(tenant, cred, min_remaining_ms, deadline)
            .await
    }

    /// A client reports that WeChat rejected `rejected`: refreshed once if it is still the
    /// stored token, otherwise the current one. An authorizer must be known and authorized.
    pub async fn invalidate(
        &self,
        tenant: &Arc<Tenant>,
        cred: &Credential,
        rejected: &str,
        deadline: Instant,
    ) -> Result<Token, Error> {
        self.check_authorizer(tenant, cred).await?;
        self.tokens.replace(tenant, cred, rejected, deadline).await
    }

    /// The JS-SDK ticket `cred` (of a known, authorized authorizer, or of the Official
    /// Account).
    pub async fn jsapi_ticket(
        &self,
        tenant: &Arc<Tenant>,
        cred: &Credential,
        deadline: Instant,
    ) -> Result<Token, Error> {
        self.check_authorizer(tenant, cred).await?;
        self.tokens
            .read_or_refresh(tenant, cred, component::CALL_MIN_REMAINING_MS, deadline)
            .await
    }

    /// The `wx.config` values for `url` (signed without its `#fragment`) with the JS-SDK ticket
    /// `cred` of `appid`.
    pub async fn sign_jsapi_url(
        &self,
        tenant: &Arc<Tenant>,
        cred: &Credential,
        appid: String,
        url: &str,
        deadline: Instant,
    ) -> Result<JsapiSignature, Error> {
        // Signed exactly as the page will report it (minus the fragment).
        let url = url.split('#').next().unwrap_or_default().to_owned();
        let ticket = self.jsapi_ticket(tenant, cred, deadline).await?;
        let nonce_str = wxhub_crypto::random_nonce(16);
        let timestamp = self.shared.now_ms() / 1000;
        let signature = wxhub_crypto::jssdk_signature(
            ticket.value.expose(),
            &nonce_str,
            &timestamp.to_string(),
            &url,
        );
        Ok(JsapiSignature {
            appid,
            nonce_str,
            timestamp,
            signature,
            url,
        })
    }

    /// For an authorizer's credential: the authorizer must be known and authorized (so an
    /// unknown appid is NotFound before any token call; the store may first re-list).
    async fn check_authorizer(&self, tenant: &Arc<Tenant>, cred: &Credential) -> Result<(), Error> {
        if let Some(appid) = cred.authorizer() {
            self.authorizers.active(&self.tokens, tenant, appid).await?;
        }
        Ok(())
    }

    // ---------------------------------------------------------------- authorizers

    /// The PC and mobile authorization URLs of a component tenant's pages, with its shared
    /// pre-auth code.
    pub async fn authorization_url(
        &self,
        tenant: &Arc<Tenant>,
        redirect: &url::Url,
        offer: Offer<'_>,
        deadline: Instant,
    ) -> Result<AuthorizationUrl, Error> {
        self.pre_auth
            .authorization_url(&self.tokens, tenant, redirect, offer, deadline)
            .await
    }

    /// Exchanges an authorization code from the redirect and stores the authorizer; a code
    /// the `authorized` notice exchanged first is answered from that exchange. After a
    /// successful exchange the shared pre-auth code named by `pre_auth_marker` is retired.
    pub async fn exchange_auth_code(
        &self,
        tenant: &Arc<Tenant>,
        code: &str,
        pre_auth_marker: Option<&str>,
        deadline: Instant,
    ) -> Result<AuthorizerRecord, Error> {
        let record = self
            .exchange
            .exchange(tenant, code, ExchangeBy::Redirect, None, deadline)
            .await?;
        // A code WeChat accepted proves the pre-auth code of its link was used.
        if let Some(marker) = pre_auth_marker {
            self.pre_auth.retire(tenant, marker, "redirect").await;
        }
        Ok(record)
    }

    /// The record of `appid`.
    pub async fn authorizer(
        &self,
        tenant: &Arc<Tenant>,
        appid: &str,
    ) -> Result<AuthorizerRecord, Error> {
        self.authorizers.record(tenant, appid).await
    }

    /// Up to `size` records after `after`, in appid order, with the total.
    pub async fn list_authorizers(
        &self,
        tenant: &Arc<Tenant>,
        after: Option<&str>,
        size: usize,
    ) -> Result<AuthorizerPage, Error> {
        self.authorizers.page(tenant, after, size).await
    }

    /// Reconciles the authorizers with WeChat's list now.
    pub async fn sync_authorizers(
        &self,
        tenant: &Arc<Tenant>,
        deadline: Instant,
    ) -> Result<ReconcileSummary, Error> {
        self.reconciler
            .reconcile(&self.tokens, tenant, deadline)
            .await
    }

    // ---------------------------------------------------------------- notices

    /// Applies a component notice of `tenant` delivered as message `message_id` (once per
    /// id).
    pub async fn apply_notice(
        &self,
        tenant: &Arc<Tenant>,
        message_id: &str,
        notice: &ComponentNotice,
    ) -> Result<Applied, Error> {
        self.notices.apply(tenant, message_id, notice).await
    }

    // ---------------------------------------------------------------- background

    /// Runs the schedule poller, the ticket watch, the store watch (recovery after a loss) and
    /// the periodic reconcile until `cancel`.
    pub fn spawn_background(self: &Arc<Self>, cancel: CancellationToken) -> Vec<JoinHandle<()>> {
        let cfg = &self.shared.cfg;
        // Every interval is at least 1 ms (validated at load).
        let period = Duration::from_millis;
        let schedule = Arc::clone(&self.schedule);
        let tickets = Arc::clone(&self.tickets);
        let (recovery, tokens) = (Arc::clone(&self.recovery), Arc::clone(&self.tokens));
        let prune_every = (60_000 / cfg.store_check_interval_ms).max(1);
        vec![
            every(period(cfg.poll_interval_ms), cancel.clone(), move |_| {
                let schedule = Arc::clone(&schedule);
                async move {
                    schedule.poll_once().await;
                }
            }),
            every(
                period(cfg.ticket_check_interval_ms),
                cancel.clone(),
                move |_| {
                    let tickets = Arc::clone(&tickets);
                    async move { tickets.check().await }
                },
            ),
            every(
                period(cfg.store_check_interval_ms),
                cancel.clone(),
                move |pass| {
                    let (recovery, tokens) = (Arc::clone(&recovery), Arc::clone(&tokens));
                    async move { recovery.watch_store(&tokens, pass % prune_every == 0).await }
                },
            ),
            self.spawn_reconciles(cancel),
        ]
    }

    /// The periodic reconcile; a failed one (no ticket yet, WeChat down) is retried sooner.
    fn spawn_reconciles(&self, cancel: CancellationToken) -> JoinHandle<()> {
        let (reconciler, tokens) = (Arc::clone(&self.reconciler), Arc::clone(&self.tokens));
        let interval = self.shared.cfg.reconcile_interval_ms;
        tokio::spawn(async move {
            loop {
                let ok = tokio::select! {
                    () = cancel.cancelled() => return,
                    ok = reconciler.all_guarded(&tokens) => ok,
                };
                let wait = if ok { interval } else { interval.min(60_000) };
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(wait)) => {}
                }
            }
        })
    }

    /// Redis reachability, for readiness.
    pub async fn ping(&self) -> Result<String, String> {
        self.store.ping().await.map_err(|e| e.to_string())
    }

    /// Readiness detail: every component tenant has a ticket younger than 12 h.
    pub async fn ticket_readiness(&self) -> Result<String, String> {
        self.tickets.readiness().await
    }

    /// Entries the schedule poller claimed and has not finished refreshing (benchmarks and
    /// tests wait for 0 together with an empty due set).
    #[cfg(feature = "test-util")]
    pub fn pending_refreshes(&self) -> usize {
        self.schedule.pending()
    }

    // ---------------------------------------------------------------- request helpers

    /// The deadline of a request: `now + min(requested, request_timeout)`.
    pub fn deadline_for(&self, requested: Option<Duration>) -> Instant {
        let cap = self.shared.cfg.request_timeout();
        Instant::now() + requested.map_or(cap, |r| r.min(cap))
    }

    /// The minimum remaining lifetime a request asks for (ms): `default_min_remaining_ms` for
    /// 0.
    pub fn min_remaining_ms(&self, requested_secs: u32) -> i64 {
        if requested_secs == 0 {
            i64::try_from(self.shared.cfg.default_min_remaining_ms).unwrap_or(300_000)
        } else {
            i64::from(requested_secs) * 1000
        }
    }
}

/// Runs `pass(n)` (n = 0, 1, …) every `period` until `cancel`; a pass that overruns delays the
/// next instead of bunching them.
fn every<F, Fut>(period: Duration, cancel: CancellationToken, mut pass: F) -> JoinHandle<()>
where
    F: FnMut(u64) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for n in 0u64.. {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => pass(n).await,
            }
        }
    })
}
