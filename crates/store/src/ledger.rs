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
//! One marker per id at `Keys::consumed` (`…:consumed:{id}`, `PX ttl`), under the tenant's hash
//! tag like every other key of the tenant.

use std::time::Duration;

use crate::{Store, StoreError, px};

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

    /// Whether message `id` of `tenant` was already applied.
    pub async fn applied(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        let key = self.store.keys(tenant).consumed(id);
        let mut conn = self.store.conn();
        let n: i64 = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut conn)
            .await?;
        Ok(n == 1)
    }

    /// Records that message `id` of `tenant` was applied, for `ttl`.
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
