//! Recovery from a store that lost its state (Redis restarted without persistence, a deleted
//! namespace): as long as one replica kept running, component and authorizer token reads succeed
//! again within seconds, without a new ticket push from WeChat, and nothing written back can
//! overwrite a newer token or bring back a revoked authorizer.
//!
//! How:
//!
//! - **Memory** (`memory`). Every replica keeps the last ticket and every still-valid token it
//!   read or wrote, per tenant, until they expire (the 1 s read cache is not enough: it is empty again a
//!   second later). Tokens reported rejected and authorizers revoked are forgotten.
//! - **Detection.** `…:epoch` (see `wxhub_store::recovery`) lives in the tenant's slot, so it is
//!   lost with the rest. [`Recovery::restore`] finds it missing (and creates a new one) or changed
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

use std::sync::Arc;
use std::time::{Duration, Instant};

use wxhub_runtime::{Tenant, TenantKind};
use wxhub_store::{AuthorizerRecord, Epoch, Restored, TicketRecord, TokenRecord};

use super::component::TokenSource;
use super::credential::{Credential, ticket_valid};
use super::reconcile::Reconciler;
use super::shared::Shared;
use super::tickets::Tickets;
use crate::error::Error;

/// Pause before a failed re-list after a loss is tried again (by any replica).
const HEAL_RETRY: Duration = Duration::from_secs(5);

/// Value of the reconcile guard while a failed re-list backs off.
const BACKING_OFF: &str = "retry";

/// Poll period while waiting for another replica (its write-back or its re-list).
const WAIT_STEP: Duration = Duration::from_millis(50);

/// Recovery after a store loss.
pub(crate) struct Recovery {
    s: Arc<Shared>,
    tickets: Arc<Tickets>,
    reconciler: Arc<Reconciler>,
}

impl Recovery {
    pub(crate) fn new(s: Arc<Shared>, tickets: Arc<Tickets>, reconciler: Arc<Reconciler>) -> Self {
        Self {
            s,
            tickets,
            reconciler,
        }
    }

    /// Checks the tenant's epoch; when it is new to this replica (the store lost the tenant's
    /// state, or this is the replica's first look), writes back the held ticket and tenant
    /// tokens, and once the epoch is healed the held authorizer tokens. Only Redis calls, never
    /// WeChat, so it can run anywhere (inside a refresh, under a lease).
    pub(crate) async fn restore(&self, tenant: &Tenant) -> Result<Epoch, Error> {
        let memory = &self.s.memory;
        let gate = memory.gate(tenant.id.as_str());
        let _one = gate.lock().await;
        let now = self.s.now_ms();
        let mut epoch = self.s.creds.epoch(tenant.id.as_str(), now).await?;
        let known = memory.epoch(tenant.id.as_str());
        if known.as_deref() != Some(epoch.id.as_str()) {
            if known.is_some() {
                metrics::counter!("wxhub_store_losses_total", "tenant" => tenant.id.to_string())
                    .increment(1);
                tracing::warn!(
                    tenant = %tenant.id,
                    "the store lost this tenant's state; writing back what this replica holds"
                );
            } else if epoch.created {
                tracing::info!(
                    tenant = %tenant.id,
                    "no store epoch: a new store, or one that lost its state; starting a new one"
                );
            }
            self.write_back(tenant.id.as_str(), false).await?;
            memory.adopt_epoch(tenant.id.as_str(), &epoch.id);
        }
        if epoch.healed_at_ms.is_none() && tenant.kind != TenantKind::Component {
            // Nothing to re-list: the tenant's own tokens are all there is.
            self.s
                .creds
                .mark_healed(tenant.id.as_str(), &epoch.id, now)
                .await?;
            epoch.healed_at_ms = Some(now);
        }
        if epoch.healed_at_ms.is_some()
            && memory.set_authorizers_pending(tenant.id.as_str(), false)
            && let Err(e) = self.write_back(tenant.id.as_str(), true).await
        {
            memory.set_authorizers_pending(tenant.id.as_str(), true);
            return Err(e);
        }
        Ok(epoch)
    }

    /// Writes back the held ticket and tenant tokens, or the held authorizer tokens.
    async fn write_back(&self, tenant: &str, authorizers: bool) -> Result<(), Error> {
        let (creds, memory) = (&self.s.creds, &self.s.memory);
        let now = self.s.now_ms();
        if !authorizers {
            creds.raise_fence(tenant, memory.fence(tenant)).await?;
        }
        let (ticket, tokens) = memory.snapshot(tenant, authorizers, now);
        let mut written = 0u64;
        if let Some(t) = ticket.filter(|_| !authorizers)
            && creds.restore_ticket(tenant, &t, now).await?
        {
            metrics::counter!("wxhub_store_restored_total", "what" => "ticket").increment(1);
            written += 1;
        }
        for (name, record) in tokens {
            let cred = Credential::parse(&name);
            let appid = cred.as_ref().and_then(Credential::authorizer);
            // The refresh window the token was issued with (stable_token's differs from the
            // others'), or now if it has passed.
            let due = record.due_ms.max(now);
            match creds
                .restore_token(tenant, &name, &record, due, appid)
                .await?
            {
                Restored::Written => {
                    metrics::counter!("wxhub_store_restored_total", "what" => "token").increment(1);
                    written += 1;
                }
                Restored::Kept => {}
                // Not (or no longer) authorized: never bring it back.
                Restored::NotAuthorized => memory.forget(tenant, &name, None),
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

    /// The stored token of `cred`. When there is none while this replica holds a valid one,
    /// restores first (for an authorizer token after the re-list, which it waits for) and reads
    /// again.
    pub(crate) async fn read_or_restore(
        &self,
        tokens: &dyn TokenSource,
        tenant: &Arc<Tenant>,
        cred: &Credential,
        deadline: Instant,
    ) -> Result<Option<TokenRecord>, Error> {
        let stored = self.s.read_token(tenant.id.as_str(), cred).await?;
        if stored.is_some() {
            return Ok(stored);
        }
        let name = cred.name();
        let memory = &self.s.memory;
        if !memory.holds_valid(tenant.id.as_str(), &name, self.s.now_ms()) {
            return Ok(None);
        }
        let epoch = self.restore(tenant).await?;
        let mut healed = epoch.healed_at_ms.is_some();
        if !healed && cred.authorizer().is_some() && (epoch.has_ticket || epoch.has_component_token)
        {
            healed = self
                .relist_after_loss(tokens, tenant, deadline, true)
                .await?;
        }
        let again = self.s.read_token(tenant.id.as_str(), cred).await?;
        if again.is_none() && healed {
            // Gone for a reason (revoked, dropped): stop holding it.
            memory.forget(tenant.id.as_str(), &name, None);
        }
        Ok(again)
    }

    /// The stored ticket if still valid. When there is none, restores (this replica's ticket, if
    /// it holds one) and, while the store was only just found empty, waits for another replica
    /// to write its ticket back — until the grace ends, `deadline`, or half a lease.
    pub(crate) async fn usable_ticket(
        &self,
        tenant: &Tenant,
        deadline: Instant,
    ) -> Result<Option<TicketRecord>, Error> {
        let (creds, memory) = (&self.s.creds, &self.s.memory);
        if let Some(t) = creds.ticket(tenant.id.as_str()).await? {
            memory.hold_ticket(tenant.id.as_str(), &t);
            if ticket_valid(&t, self.s.now_ms()) {
                return Ok(Some(t));
            }
        }
        let epoch = self.restore(tenant).await?;
        let until = deadline.min(Instant::now() + self.s.cfg.lock_ttl() / 2);
        loop {
            if let Some(t) = creds.ticket(tenant.id.as_str()).await?
                && ticket_valid(&t, self.s.now_ms())
            {
                memory.hold_ticket(tenant.id.as_str(), &t);
                return Ok(Some(t));
            }
            if !self.tickets.in_grace(&epoch) || Instant::now() + WAIT_STEP >= until {
                return Ok(None);
            }
            tokio::time::sleep(WAIT_STEP).await;
        }
    }

    /// Re-lists the authorizers after a loss, once across replicas (the periodic reconcile's
    /// guard). With `wait`, a replica that does not get the guard waits for the other's re-list
    /// (until `deadline`); returns whether the epoch is healed now (and then has written back the
    /// held authorizer tokens).
    pub(crate) async fn relist_after_loss(
        &self,
        tokens: &dyn TokenSource,
        tenant: &Arc<Tenant>,
        deadline: Instant,
        wait: bool,
    ) -> Result<bool, Error> {
        let creds = &self.s.creds;
        loop {
            if creds
                .guard(tenant.id.as_str(), "reconcile", self.reconciler.guard_ttl())
                .await?
            {
                tracing::info!(tenant = %tenant.id, "re-listing the authorizers the store lost");
                match self.reconciler.reconcile(tokens, tenant, deadline).await {
                    Ok(_) => {
                        if self.is_healed(tenant).await? {
                            self.restore(tenant).await?;
                            return Ok(true);
                        }
                        // This replica's reconcile was already running when the store lost
                        // its state (the call joined it): free the guard and run another.
                        creds
                            .clear_marker(tenant.id.as_str(), "reconcile", "1")
                            .await?;
                    }
                    Err(e) => {
                        // Back off instead of clearing: a tenant WeChat refuses must not be
                        // re-listed every check.
                        let _ = creds
                            .mark(
                                tenant.id.as_str(),
                                "reconcile",
                                BACKING_OFF,
                                HEAL_RETRY,
                                false,
                            )
                            .await;
                        return Err(e);
                    }
                }
            } else {
                if !wait
                    || creds
                        .marker(tenant.id.as_str(), "reconcile")
                        .await?
                        .as_deref()
                        == Some(BACKING_OFF)
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

    async fn is_healed(&self, tenant: &Tenant) -> Result<bool, Error> {
        let epoch = self
            .s
            .creds
            .epoch(tenant.id.as_str(), self.s.now_ms())
            .await?;
        Ok(epoch.healed_at_ms.is_some())
    }

    /// The stored record of `appid`. When there is none, the account may only be one the store
    /// forgot: a pending recovery is completed first (waiting for another replica's re-list),
    /// else the authorizers are re-listed at most once per `relist_interval_ms` per tenant;
    /// then the record is read again.
    pub(crate) async fn find_authorizer(
        &self,
        tokens: &dyn TokenSource,
        tenant: &Arc<Tenant>,
        appid: &str,
    ) -> Result<Option<AuthorizerRecord>, Error> {
        let auths = &self.s.auths;
        if let Some(r) = auths.get(tenant.id.as_str(), appid).await? {
            return Ok(Some(r));
        }
        if tenant.kind != TenantKind::Component {
            return Ok(None);
        }
        let deadline = Instant::now() + self.s.cfg.request_timeout();
        let epoch = self.restore(tenant).await?;
        if epoch.healed_at_ms.is_none() {
            let healed = epoch.has_ticket || epoch.has_component_token;
            if !(healed
                && self
                    .relist_after_loss(tokens, tenant, deadline, true)
                    .await?)
            {
                return Err(Error::Unavailable(
                    "the credential store lost this tenant's state and is being restored; retry shortly",
                ));
            }
        } else {
            // The re-list that healed the epoch may have completed between the read above and
            // `restore`: it stores the records before marking the epoch healed, so read again
            // before taking the interval's re-list for an account that is only late.
            if let Some(r) = auths.get(tenant.id.as_str(), appid).await? {
                return Ok(Some(r));
            }
            let interval = Duration::from_millis(self.s.cfg.relist_interval_ms);
            if self
                .s
                .creds
                .guard(tenant.id.as_str(), "relist", interval)
                .await?
            {
                tracing::info!(
                    tenant = %tenant.id,
                    appid,
                    "unknown authorizer: re-listing the authorizers"
                );
                if let Err(e) = self.reconciler.reconcile(tokens, tenant, deadline).await {
                    tracing::warn!(tenant = %tenant.id, error = %e, "re-list for an unknown authorizer failed");
                }
            }
        }
        Ok(auths.get(tenant.id.as_str(), appid).await?)
    }

    /// One pass of the store watch: every tenant's epoch is checked (and what this replica
    /// holds written back after a loss); a component tenant whose epoch is not healed is
    /// re-listed in the background once a ticket or component token is stored, or asked for a
    /// ticket push once the grace has passed without one. `prune` also drops expired tokens.
    pub(crate) async fn watch_store(self: &Arc<Self>, tokens: &dyn TokenSource, prune: bool) {
        if prune {
            self.s.memory.prune(self.s.now_ms());
        }
        let tenants = self.s.tenants.current();
        for tenant in tenants.iter() {
            let epoch = match self.restore(tenant).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::debug!(tenant = %tenant.id, error = %e, "store check failed");
                    continue;
                }
            };
            if epoch.healed_at_ms.is_some() || tenant.kind != TenantKind::Component {
                continue;
            }
            if epoch.has_ticket || epoch.has_component_token {
                // In its own task: a slow re-list must not hold up the other tenants' checks.
                let (this, tokens, tenant) = (Arc::clone(self), tokens.owned(), Arc::clone(tenant));
                tokio::spawn(async move {
                    let deadline = Instant::now() + this.s.cfg.request_timeout();
                    if let Err(e) = this
                        .relist_after_loss(&*tokens, &tenant, deadline, false)
                        .await
                    {
                        tracing::warn!(tenant = %tenant.id, error = %e, "re-list after a loss failed; retrying");
                    }
                });
            } else if !self.tickets.in_grace(&epoch) {
                self.tickets.request_push(tenant).await;
            }
        }
    }
}
