//! What this replica remembers of every tenant for a recovery after the store lost its state
//! (see `recovery`): the last ticket, every still-valid token it read or wrote, the highest
//! fence it took or saw, and the store epoch it last saw.
//!
//! Guarantee: nothing held outlives its validity (expired tokens are dropped when a snapshot is
//! taken and by the minute's prune), a token reported rejected and the tokens of a revoked
//! authorizer are forgotten at once, and a held ticket is only ever replaced by a newer push.
//! The common case, the same token read again, takes only the read lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use wxhub_store::{TicketRecord, TokenRecord};

use super::credential::{Credential, ticket_valid};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

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
pub(crate) struct Memory {
    tenants: RwLock<HashMap<String, Held>>,
    /// One restore per tenant at a time in this replica (readers that find the store empty
    /// together write back once).
    gates: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Memory {
    fn held(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Held>> {
        self.tenants.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn held_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Held>> {
        self.tenants.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Remembers `record` as the current token of `cred` (a rejected one is forgotten).
    pub(crate) fn hold_token(&self, tenant: &str, cred: &str, record: &TokenRecord) {
        // The common case (the same token read again) takes only the read lock.
        let same = self
            .held()
            .get(tenant)
            .and_then(|h| h.tokens.get(cred))
            .is_some_and(|held| held == record);
        if same {
            return;
        }
        let mut tenants = self.held_mut();
        let held = tenants.entry(tenant.to_owned()).or_default();
        held.fence = held.fence.max(record.fence);
        if record.rejected {
            held.tokens.remove(cred);
        } else {
            held.tokens.insert(cred.to_owned(), record.clone());
        }
    }

    /// Forgets the tokens of an authorizer (revoked, or authorized anew).
    pub(crate) fn forget_authorizer(&self, tenant: &str, appid: &str) {
        if let Some(held) = self.held_mut().get_mut(tenant) {
            held.tokens
                .remove(&Credential::Authorizer(appid.to_owned()).name());
            held.tokens
                .remove(&Credential::Jsapi(Some(appid.to_owned())).name());
        }
    }

    /// Records a fence this replica took (a lease, a reconcile).
    pub(crate) fn saw_fence(&self, tenant: &str, fence: u64) {
        let seen = self.held().get(tenant).is_some_and(|h| h.fence >= fence);
        if !seen {
            let mut tenants = self.held_mut();
            let held = tenants.entry(tenant.to_owned()).or_default();
            held.fence = held.fence.max(fence);
        }
    }

    pub(crate) fn fence(&self, tenant: &str) -> u64 {
        self.held().get(tenant).map_or(0, |h| h.fence)
    }

    /// Forgets the token of `cred` (or only if it is `value`).
    pub(crate) fn forget(&self, tenant: &str, cred: &str, value: Option<&str>) {
        let mut tenants = self.held_mut();
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
    pub(crate) fn holds_valid(&self, tenant: &str, cred: &str, now_ms: i64) -> bool {
        self.held()
            .get(tenant)
            .and_then(|h| h.tokens.get(cred))
            .is_some_and(|t| t.remaining_ms(now_ms) > 0)
    }

    /// Remembers `ticket` unless a newer one is held.
    pub(crate) fn hold_ticket(&self, tenant: &str, ticket: &TicketRecord) {
        let mut tenants = self.held_mut();
        let held = tenants.entry(tenant.to_owned()).or_default();
        if held
            .ticket
            .as_ref()
            .is_none_or(|t| t.create_time <= ticket.create_time)
        {
            held.ticket = Some(ticket.clone());
        }
    }

    pub(crate) fn epoch(&self, tenant: &str) -> Option<String> {
        self.held().get(tenant).and_then(|h| h.epoch.clone())
    }

    pub(crate) fn adopt_epoch(&self, tenant: &str, id: &str) {
        let mut tenants = self.held_mut();
        let held = tenants.entry(tenant.to_owned()).or_default();
        held.epoch = Some(id.to_owned());
        held.authorizers_pending = true;
    }

    pub(crate) fn set_authorizers_pending(&self, tenant: &str, pending: bool) -> bool {
        let mut tenants = self.held_mut();
        let held = tenants.entry(tenant.to_owned()).or_default();
        std::mem::replace(&mut held.authorizers_pending, pending)
    }

    /// The held ticket and the held tokens still valid at `now_ms` (authorizer tokens or the
    /// tenant's own); expired ones are dropped.
    pub(crate) fn snapshot(
        &self,
        tenant: &str,
        authorizers: bool,
        now_ms: i64,
    ) -> (Option<TicketRecord>, Vec<(String, TokenRecord)>) {
        let mut tenants = self.held_mut();
        let Some(held) = tenants.get_mut(tenant) else {
            return (None, Vec::new());
        };
        held.tokens.retain(|_, t| t.remaining_ms(now_ms) > 0);
        let tokens = held
            .tokens
            .iter()
            .filter(|(name, _)| {
                Credential::parse(name).is_some_and(|c| c.authorizer().is_some() == authorizers)
            })
            .map(|(name, t)| (name.clone(), t.clone()))
            .collect();
        let ticket = held.ticket.clone().filter(|t| ticket_valid(t, now_ms));
        (ticket, tokens)
    }

    /// Drops every expired token (called about once a minute).
    pub(crate) fn prune(&self, now_ms: i64) {
        for held in self.held_mut().values_mut() {
            held.tokens.retain(|_, t| t.remaining_ms(now_ms) > 0);
        }
    }

    pub(crate) fn gate(&self, tenant: &str) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(lock(&self.gates).entry(tenant.to_owned()).or_default())
    }
}
