//! Recovery from a store that lost its state (Redis restarted without persistence, a deleted
//! namespace): as long as one replica kept running, component and authorizer token reads succeed
//! again within seconds, without a new ticket push from WeChat, and nothing written back can
//! overwrite a newer token or bring back a revoked authorizer.
//!
//! How:
//!
//! - **Memory.** Every replica keeps the last ticket and every still-valid token it read or
//!   wrote, per tenant, until they expire (the 1 s read cache is not enough: it is empty again a
//!   second later). Tokens reported rejected and authorizers revoked are forgotten.
//! - **Detection.** `…:epoch` (see `wxhub_store::recovery`) lives in the tenant's slot, so it is
//!   lost with the rest. [`Engine::restore`] finds it missing (and creates a new one) or changed
//!   from the id this replica remembers: the store lost the tenant's state. It runs on every
//!   tenant each `store_check_interval_ms` in every replica, and at once when a read finds no
//!   token where this replica holds a valid one, when a component token is needed and no ticket
//!   is stored, and when an authorizer is unknown.
//! - **Write-back.** The replica writes back its ticket and the tenant's own tokens (component,
//!   app, JS-SDK) at once; authorizer tokens only after the re-list stored the accounts again,
//!   because the restore script refuses a token of an account not stored as authorized — a
//!   revoked one is not in WeChat's list, so it is never brought back. The script also never
//!   writes while a refresh holds the lease, nor over a token a refresh wrote. The tenant's fence
//!   counter, lost too, is raised to the highest fence the replica took or saw, so later leases
//!   outrank every restored token and every lease taken before the loss.
//! - **Re-list.** `api_get_authorizer_list` brings back the accounts with their refresh tokens.
//!   It runs once across replicas: under the periodic reconcile's guard (lost with the store, so
//!   the first replica to ask gets it, and the hourly reconcile then counts it as its own). Any
//!   reconcile that completes marks the epoch healed. It is only tried once a ticket or a
//!   component token is stored, so a replica that holds neither waits for one that does instead
//!   of failing; a failed one is retried after [`HEAL_RETRY`].
//! - **Ticket push.** WeChat is asked for a push only if no ticket is stored
//!   `heal_ticket_grace_ms` after the epoch was created: long enough for every running replica to
//!   notice the loss (they check every `store_check_interval_ms`, which config validation keeps
//!   below the grace) and write its ticket back. Until then a component refresh waits for the
//!   ticket instead of failing. After all replicas restarted nobody holds one, and the push
//!   happens once the grace has passed.
//! - **Unknown authorizers.** A read of an account the store does not know first completes a
//!   pending recovery (waiting for another replica's re-list), else re-lists at most once per
//!   `relist_interval_ms` per tenant, and only then answers NotFound.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use wxhub_runtime::TenantKind;
use wxhub_store::{AuthorizerRecord, Epoch, Restored, TicketRecord, TokenRecord};

use super::{Credential, Engine, lock, ticket_valid};
use crate::error::Error;

/// Pause before a failed re-list after a loss is tried again (by any replica).
const HEAL_RETRY: Duration = Duration::from_secs(5);

/// Value of the reconcile guard while a failed re-list backs off.
const BACKING_OFF: &str = "retry";

/// Poll period while waiting for another replica (its write-back or its re-list).
const WAIT_STEP: Duration = Duration::from_millis(50);

/// What this replica holds of one tenant.
#[derive(Debug, Default)]
struct Held {
    /// The epoch this replica last saw (`None` before its first check).
    epoch: Option<String>,
    ticket: Option<TicketRecord>,
    /// Credential name → the latest token read or written.
    tokens: HashMap<String, TokenRecord>,
    /// Authorizer tokens still to write back once the store knows the accounts again.
    authorizers_pending: bool,
    /// The highest fence this replica took or saw: the tenant's counter is raised to it after
    /// a loss, so a holder paused across the loss cannot write over a later refresh.
    fence: u64,
}

/// Tickets and tokens this replica has seen, per tenant, kept until they expire.
#[derive(Debug, Default)]
pub(super) struct Memory {
    tenants: RwLock<HashMap<String, Held>>,
    /// One restore per tenant at a time in this replica (readers that find the store empty
    /// together write back once).
    gates: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// The authorizer a credential belongs to.
fn authorizer_of(cred: &Credential) -> Option<&str> {
    match cred {
        Credential::Authorizer(a) | Credential::Jsapi(Some(a)) => Some(a),
        _ => None,
    }
}

impl Memory {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Held>> {
        self.tenants
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Held>> {
        self.tenants
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Remembers `record` as the current token of `cred` (a rejected one is forgotten).
    pub(super) fn hold_token(&self, tenant: &str, cred: &str, record: &TokenRecord) {
        // The common case (the same token read again) takes only the read lock.
        let same = self
            .read()
            .get(tenant)
            .and_then(|h| h.tokens.get(cred))
            .is_some_and(|held| held == record);
        if same {
            return;
        }
        let mut tenants = self.write();
        let held = tenants.entry(tenant.to_owned()).or_default();
        held.fence = held.fence.max(record.fence);
        if record.rejected {
            held.tokens.remove(cred);
        } else {
            held.tokens.insert(cred.to_owned(), record.clone());
        }
    }

    /// Forgets the tokens of an authorizer (revoked, or authorized anew).
    pub(super) fn forget_authorizer(&self, tenant: &str, appid: &str) {
        if let Some(held) = self.write().get_mut(tenant) {
            held.tokens
                .remove(&Credential::Authorizer(appid.to_owned()).name());
            held.tokens
                .remove(&Credential::Jsapi(Some(appid.to_owned())).name());
        }
    }

    /// Records a fence this replica took (a lease, a reconcile).
    pub(super) fn saw_fence(&self, tenant: &str, fence: u64) {
        let seen = self.read().get(tenant).is_some_and(|h| h.fence >= fence);
        if !seen {
            let mut tenants = self.write();
            let held = tenants.entry(tenant.to_owned()).or_default();
            held.fence = held.fence.max(fence);
        }
    }

    fn fence(&self, tenant: &str) -> u64 {
        self.read().get(tenant).map_or(0, |h| h.fence)
    }

    /// Forgets the token of `cred` (or only if it is `value`).
    pub(super) fn forget(&self, tenant: &str, cred: &str, value: Option<&str>) {
        let mut tenants = self.write();
        if let Some(held) = tenants.get_mut(tenant)
            && held
                .tokens
                .get(cred)
                .is_some_and(|t| value.is_none_or(|v| t.value.expose() == v))
        {
            held.tokens.remove(cred);
        }
    }

    /// Whether a token of `cred` with life left is held.
    fn holds_valid(&self, tenant: &str, cred: &str, now_ms: i64) -> bool {
        self.read()
            .get(tenant)
            .and_then(|h| h.tokens.get(cred))
            .is_some_and(|t| t.remaining_ms(now_ms) > 0)
    }

    /// Remembers `ticket` unless a newer one is held.
    pub(super) fn hold_ticket(&self, tenant: &str, ticket: &TicketRecord) {
        let mut tenants = self.write();
        let held = tenants.entry(tenant.to_owned()).or_default();
        if held
            .ticket
            .as_ref()
            .is_none_or(|t| t.create_time <= ticket.create_time)
        {
            held.ticket = Some(ticket.clone());
        }
    }

    fn epoch(&self, tenant: &str) -> Option<String> {
        self.read().get(tenant).and_then(|h| h.epoch.clone())
    }

    fn adopt_epoch(&self, tenant: &str, id: &str) {
        let mut tenants = self.write();
        let held = tenants.entry(tenant.to_owned()).or_default();
        held.epoch = Some(id.to_owned());
        held.authorizers_pending = true;
    }

    fn set_authorizers_pending(&self, tenant: &str, pending: bool) -> bool {
        let mut tenants = self.write();
        let held = tenants.entry(tenant.to_owned()).or_default();
        std::mem::replace(&mut held.authorizers_pending, pending)
    }

    /// The held ticket and the held tokens still valid at `now_ms` (authorizer tokens or the
    /// tenant's own); expired ones are dropped.
    fn snapshot(
        &self,
        tenant: &str,
        authorizers: bool,
        now_ms: i64,
    ) -> (Option<TicketRecord>, Vec<(String, TokenRecord)>) {
        let mut tenants = self.write();
        let Some(held) = tenants.get_mut(tenant) else {
            return (None, Vec::new());
        };
        held.tokens.retain(|_, t| t.remaining_ms(now_ms) > 0);
        let tokens = held
            .tokens
            .iter()
            .filter(|(name, _)| {
                Credential::parse(name).is_some_and(|c| authorizer_of(&c).is_some() == authorizers)
            })
            .map(|(name, t)| (name.clone(), t.clone()))
            .collect();
        let ticket = held.ticket.clone().filter(|t| ticket_valid(t, now_ms));
        (ticket, tokens)
    }

    /// Drops every expired token (called about once a minute).
    fn prune(&self, now_ms: i64) {
        for held in self.write().values_mut() {
            held.tokens.retain(|_, t| t.remaining_ms(now_ms) > 0);
        }
    }

    fn gate(&self, tenant: &str) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(lock(&self.gates).entry(tenant.to_owned()).or_default())
    }
}

impl Engine {
    /// Remembers a ticket this replica stored or read (for a write-back after a loss).
    pub fn hold_ticket(&self, tenant: &str, ticket: &TicketRecord) {
        self.memory.hold_ticket(tenant, ticket);
    }

    fn is_component(&self, tenant: &str) -> bool {
        self.tenant(tenant)
            .is_ok_and(|t| t.kind == TenantKind::Component)
    }

    fn heal_grace_ms(&self) -> i64 {
        i64::try_from(self.cfg.heal_ticket_grace_ms).unwrap_or(i64::MAX)
    }

    /// Checks the tenant's epoch; when it is new to this replica (the store lost the tenant's
    /// state, or this is the replica's first look), writes back the held ticket and tenant
    /// tokens, and once the epoch is healed the held authorizer tokens. Only Redis calls, never
    /// WeChat, so it can run anywhere (inside a refresh, under a lease).
    pub(super) async fn restore(&self, tenant: &str) -> Result<Epoch, Error> {
        let gate = self.memory.gate(tenant);
        let _one = gate.lock().await;
        let now = self.now_ms();
        let mut epoch = self.creds.epoch(tenant, now).await?;
        let known = self.memory.epoch(tenant);
        if known.as_deref() != Some(epoch.id.as_str()) {
            if known.is_some() {
                metrics::counter!("wxhub_store_losses_total", "tenant" => tenant.to_owned())
                    .increment(1);
                tracing::warn!(
                    tenant,
                    "the store lost this tenant's state; writing back what this replica holds"
                );
            } else if epoch.created {
                tracing::info!(
                    tenant,
                    "no store epoch: a new store, or one that lost its state; starting a new one"
                );
            }
            self.write_back(tenant, false).await?;
            self.memory.adopt_epoch(tenant, &epoch.id);
        }
        if epoch.healed_at_ms.is_none() && !self.is_component(tenant) {
            // Nothing to re-list: the tenant's own tokens are all there is.
            self.creds.mark_healed(tenant, &epoch.id, now).await?;
            epoch.healed_at_ms = Some(now);
        }
        if epoch.healed_at_ms.is_some()
            && self.memory.set_authorizers_pending(tenant, false)
            && let Err(e) = self.write_back(tenant, true).await
        {
            self.memory.set_authorizers_pending(tenant, true);
            return Err(e);
        }
        Ok(epoch)
    }

    /// Writes back the held ticket and tenant tokens, or the held authorizer tokens.
    async fn write_back(&self, tenant: &str, authorizers: bool) -> Result<(), Error> {
        let now = self.now_ms();
        if !authorizers {
            self.creds
                .raise_fence(tenant, self.memory.fence(tenant))
                .await?;
        }
        let (ticket, tokens) = self.memory.snapshot(tenant, authorizers, now);
        let mut written = 0u64;
        if let Some(t) = ticket.filter(|_| !authorizers)
            && self.creds.restore_ticket(tenant, &t, now).await?
        {
            metrics::counter!("wxhub_store_restored_total", "what" => "ticket").increment(1);
            written += 1;
        }
        for (name, record) in tokens {
            let cred = Credential::parse(&name);
            let appid = cred.as_ref().and_then(authorizer_of);
            // The refresh window the token was issued with (stable_token's differs from the
            // others'), or now if it has passed.
            let due = record.due_ms.max(now);
            match self
                .creds
                .restore_token(tenant, &name, &record, due, appid)
                .await?
            {
                Restored::Written => {
                    metrics::counter!("wxhub_store_restored_total", "what" => "token").increment(1);
                    written += 1;
                }
                Restored::Kept => {}
                // Not (or no longer) authorized: never bring it back.
                Restored::NotAuthorized => self.memory.forget(tenant, &name, None),
            }
        }
        if written > 0 {
            tracing::info!(
                tenant,
                written,
                authorizers,
                "wrote back credentials the store had lost"
            );
        }
        Ok(())
    }

    /// A read of `cred` that finds nothing stored while this replica holds a valid token:
    /// restores (for an authorizer token after the re-list, which it waits for) and reads again.
    /// Otherwise the plain read.
    pub(super) async fn read_or_restore(
        self: &Arc<Self>,
        tenant: &str,
        cred: &Credential,
        deadline: Instant,
    ) -> Result<Option<TokenRecord>, Error> {
        let name = cred.name();
        let stored = self.read(tenant, &name).await?;
        if stored.is_some() || !self.memory.holds_valid(tenant, &name, self.now_ms()) {
            return Ok(stored);
        }
        let epoch = self.restore(tenant).await?;
        let mut healed = epoch.healed_at_ms.is_some();
        if !healed
            && authorizer_of(cred).is_some()
            && (epoch.has_ticket || epoch.has_component_token)
        {
            healed = self.relist_after_loss(tenant, deadline, true).await?;
        }
        let again = self.read(tenant, &name).await?;
        if again.is_none() && healed {
            // Gone for a reason (revoked, dropped): stop holding it.
            self.memory.forget(tenant, &name, None);
        }
        Ok(again)
    }

    /// The stored ticket if still valid. When there is none, restores (this replica's ticket, if
    /// it holds one) and, while the store was only just found empty, waits for another replica
    /// to write its ticket back — until the grace ends, `deadline`, or half a lease.
    pub(super) async fn usable_ticket(
        &self,
        tenant: &str,
        deadline: Instant,
    ) -> Result<Option<TicketRecord>, Error> {
        if let Some(t) = self.creds.ticket(tenant).await? {
            self.memory.hold_ticket(tenant, &t);
            if ticket_valid(&t, self.now_ms()) {
                return Ok(Some(t));
            }
        }
        let epoch = self.restore(tenant).await?;
        let until = deadline.min(Instant::now() + self.cfg.lock_ttl() / 2);
        loop {
            if let Some(t) = self.creds.ticket(tenant).await?
                && ticket_valid(&t, self.now_ms())
            {
                self.memory.hold_ticket(tenant, &t);
                return Ok(Some(t));
            }
            let in_grace = epoch.healed_at_ms.is_none()
                && self.now_ms() < epoch.created_at_ms + self.heal_grace_ms();
            if !in_grace || Instant::now() + WAIT_STEP >= until {
                return Ok(None);
            }
            tokio::time::sleep(WAIT_STEP).await;
        }
    }

    /// Whether a ticket push must wait: the store was just found without its state and
    /// another replica may still write its ticket back.
    pub(super) async fn ticket_push_deferred(&self, tenant: &str) -> bool {
        match self.creds.epoch(tenant, self.now_ms()).await {
            Ok(e) => {
                e.healed_at_ms.is_none() && self.now_ms() < e.created_at_ms + self.heal_grace_ms()
            }
            Err(_) => false,
        }
    }

    /// Re-lists the authorizers after a loss, once across replicas (the periodic reconcile's
    /// guard). With `wait`, a replica that does not get the guard waits for the other's re-list
    /// (until `deadline`); returns whether the epoch is healed now (and then has written back the
    /// held authorizer tokens).
    pub(super) async fn relist_after_loss(
        self: &Arc<Self>,
        tenant: &str,
        deadline: Instant,
        wait: bool,
    ) -> Result<bool, Error> {
        loop {
            if self
                .creds
                .guard(tenant, "reconcile", self.reconcile_guard_ttl())
                .await?
            {
                tracing::info!(tenant, "re-listing the authorizers the store lost");
                match self.reconcile_boxed(tenant, deadline).await {
                    Ok(_) => {
                        if self.is_healed(tenant).await? {
                            self.restore(tenant).await?;
                            return Ok(true);
                        }
                        // This replica's reconcile was already running when the store lost
                        // its state (the call joined it): free the guard and run another.
                        self.creds.clear_marker(tenant, "reconcile", "1").await?;
                    }
                    Err(e) => {
                        // Back off instead of clearing: a tenant WeChat refuses must not be
                        // re-listed every check.
                        let _ = self
                            .creds
                            .mark(tenant, "reconcile", BACKING_OFF, HEAL_RETRY, false)
                            .await;
                        return Err(e);
                    }
                }
            } else {
                if !wait
                    || self.creds.marker(tenant, "reconcile").await?.as_deref() == Some(BACKING_OFF)
                {
                    return Ok(false);
                }
                if self.is_healed(tenant).await? {
                    self.restore(tenant).await?;
                    return Ok(true);
                }
                tokio::time::sleep(WAIT_STEP).await;
            }
            if Instant::now() + WAIT_STEP >= deadline {
                return Ok(false);
            }
        }
    }

    async fn is_healed(&self, tenant: &str) -> Result<bool, Error> {
        let epoch = self.creds.epoch(tenant, self.now_ms()).await?;
        Ok(epoch.healed_at_ms.is_some())
    }

    /// [`Engine::reconcile`] as a boxed future: a re-list can start from a token read that a
    /// reconcile itself makes, and the box lets the compiler see that cycle is `Send`.
    fn reconcile_boxed(
        self: &Arc<Self>,
        tenant: &str,
        deadline: Instant,
    ) -> BoxFuture<'static, Result<super::ReconcileSummary, Error>> {
        let (this, tenant) = (Arc::clone(self), tenant.to_owned());
        async move { this.reconcile(&tenant, deadline).await }.boxed()
    }

    /// [`Engine::reconcile_now`] that marks the epoch seen before it started healed when it
    /// succeeds: a complete list stored after the loss is what healing needs.
    pub(super) async fn reconcile_marking_healed(
        self: &Arc<Self>,
        tenant: &str,
        deadline: Instant,
    ) -> Result<super::ReconcileSummary, Error> {
        let epoch = self.creds.epoch(tenant, self.now_ms()).await?;
        let summary = self.reconcile_now(tenant, deadline).await?;
        if epoch.healed_at_ms.is_none()
            && self
                .creds
                .mark_healed(tenant, &epoch.id, self.now_ms())
                .await?
        {
            tracing::info!(tenant, "store healed: the authorizers are listed again");
        }
        Ok(summary)
    }

    /// The stored record of `appid`. When there is none, the account may only be one the store
    /// forgot: a pending recovery is completed first (waiting for another replica's re-list),
    /// else the authorizers are re-listed at most once per `relist_interval_ms` per tenant;
    /// then the record is read again.
    pub(crate) async fn find_authorizer(
        self: &Arc<Self>,
        tenant: &str,
        appid: &str,
    ) -> Result<Option<AuthorizerRecord>, Error> {
        if let Some(r) = self.auths.get(tenant, appid).await? {
            return Ok(Some(r));
        }
        if !self.is_component(tenant) {
            return Ok(None);
        }
        let deadline = Instant::now() + self.cfg.request_timeout();
        let epoch = self.restore(tenant).await?;
        if epoch.healed_at_ms.is_none() {
            let healed = epoch.has_ticket || epoch.has_component_token;
            if !(healed && self.relist_after_loss(tenant, deadline, true).await?) {
                return Err(Error::unavailable(
                    "the credential store lost this tenant's state and is being restored; retry shortly",
                ));
            }
        } else {
            let interval = Duration::from_millis(self.cfg.relist_interval_ms);
            if self.creds.guard(tenant, "relist", interval).await? {
                tracing::info!(
                    tenant,
                    appid,
                    "unknown authorizer: re-listing the authorizers"
                );
                if let Err(e) = self.reconcile_boxed(tenant, deadline).await {
                    tracing::warn!(tenant, error = %e, "re-list for an unknown authorizer failed");
                }
            }
        }
        Ok(self.auths.get(tenant, appid).await?)
    }

    /// One pass of the store watch: every tenant's epoch is checked (and what this replica
    /// holds written back after a loss); a component tenant whose epoch is not healed is
    /// re-listed in the background once a ticket or component token is stored, or asked for a
    /// ticket push once the grace has passed without one. `prune` also drops expired tokens.
    pub(super) async fn watch_store(self: &Arc<Self>, prune: bool) {
        if prune {
            self.memory.prune(self.now_ms());
        }
        let tenants = self.tenants.current();
        for tenant in tenants.iter() {
            let tid = tenant.id.as_str();
            let epoch = match self.restore(tid).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::debug!(tenant = tid, error = %e, "store check failed");
                    continue;
                }
            };
            if epoch.healed_at_ms.is_some() || tenant.kind != TenantKind::Component {
                continue;
            }
            if epoch.has_ticket || epoch.has_component_token {
                // In its own task: a slow re-list must not hold up the other tenants' checks.
                let this = Arc::clone(self);
                let tid = tid.to_owned();
                tokio::spawn(async move {
                    let deadline = Instant::now() + this.cfg.request_timeout();
                    if let Err(e) = this.relist_after_loss(&tid, deadline, false).await {
                        tracing::warn!(tenant = %tid, error = %e, "re-list after a loss failed; retrying");
                    }
                });
            } else if self.now_ms() >= epoch.created_at_ms + self.heal_grace_ms() {
                self.request_ticket_push(tenant).await;
            }
        }
    }
}
