//! The ledger of applied messages: a consumer that applied a bus message (token-control's
//! component notices) or carried out a job (the worker's release-check send) records the
//! message's id, and a redelivery of that id is acknowledged without a second effect.
//!
//! Guarantee: an id recorded is reported applied for `ttl` (keep it longer than any redelivery
//! can take: a day). Recording happens after the effect and is not atomic with it: a crash in
//! between applies the message again on redelivery, so what a consumer does must tolerate one
//! repetition (token-control's handlers are idempotent; the release check may send twice, which
//! WeChat's check tolerates).
//!
//! A consumer whose effect must not run twice *at the same time* (two deliveries of one id
//! handled concurrently: a duplicate published while the first is still being recorded, or a
//! redelivery to another replica) first [`Ledger::claim`]s the id: one holder at a time, the
//! others see [`LedgerClaim::Busy`] until the holder records or [`Ledger::abandon`]s it, or its lease
//! ends (a holder that died).
//!
//! One marker per id at `Keys::consumed` (`…:consumed:{id}`): `1` (`PX ttl`) once applied,
//! `pending:{holder}` (`PX lease`) while claimed; under the tenant's hash tag like every other
//! key of the tenant.

use std::time::Duration;

use crate::credentials::RELEASE;
use crate::{Store, StoreError, px};

/// What [`Ledger::claim`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerClaim {
    /// The caller holds the id: apply the message, then [`Ledger::record`] or
    /// [`Ledger::abandon`].
    Mine,
    /// Another holder is applying it now: look again shortly.
    Busy,
    /// Applied already: acknowledge without an effect.
    Applied,
}

const PENDING: &str = "pending:";

/// Applied message ids of one namespace. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Ledger {
    store: Store,
}

impl Ledger {
    /// The ledger on `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Whether message `id` of `tenant` was already applied (a claim in flight is not).
    pub async fn applied(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        let key = self.store.keys(tenant).consumed(id);
        let mut conn = self.store.conn();
        let v: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
        Ok(v.is_some_and(|v| !v.starts_with(PENDING)))
    }

    /// Takes message `id` of `tenant` for `holder` (unique per attempt) for at most `lease`.
    pub async fn claim(
        &self,
        tenant: &str,
        id: &str,
        holder: &str,
        lease: Duration,
    ) -> Result<LedgerClaim, StoreError> {
        let key = self.store.keys(tenant).consumed(id);
        let mut conn = self.store.conn();
        let set: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(format!("{PENDING}{holder}"))
            .arg("PX")
            .arg(px(lease))
            .arg("NX")
            .query_async(&mut conn)
            .await?;
        if set.is_some() {
            return Ok(LedgerClaim::Mine);
        }
        let current: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
        Ok(match current {
            // Gone between SET and GET (the lease ended): busy until the caller claims again.
            None => LedgerClaim::Busy,
            Some(v) if v.starts_with(PENDING) => LedgerClaim::Busy,
            Some(_) => LedgerClaim::Applied,
        })
    }

    /// Gives up the claim of `holder` (the effect did not happen), if it still holds it.
    pub async fn abandon(&self, tenant: &str, id: &str, holder: &str) -> Result<(), StoreError> {
        let key = self.store.keys(tenant).consumed(id);
        let mut conn = self.store.conn();
        let _: i64 = RELEASE
            .key(key)
            .arg(format!("{PENDING}{holder}"))
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Records that message `id` of `tenant` was applied, for `ttl` (ending any claim).
    pub async fn record(&self, tenant: &str, id: &str, ttl: Duration) -> Result<(), StoreError> {
        let key = self.store.keys(tenant).consumed(id);
        let mut conn = self.store.conn();
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg("1")
            .arg("PX")
            .arg(px(ttl))
            .query_async(&mut conn)
            .await?;
        Ok(())
    }
}
