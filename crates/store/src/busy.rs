//! The tenants the feeder must visit: those with held single messages or campaigns to feed.
//!
//! **Guarantee: a tenant with held jobs or a campaign to feed is in the set, or is found by
//! the feeder's full pass (every tenant, at its first tick and then every minute).** Without
//! the set the feeder read every tenant's counts every tick on every replica: two round trips
//! per tenant per tick, so its pass outgrew the tick at about a thousand tenants.
//!
//! - Adding is the writer's ([`mark_after_write`]): [`crate::Jobs::create_as`] adds the tenant
//!   after its script held a job into an empty held list (while the list is not empty the
//!   tenant stays marked: the feeder removes only a tenant with nothing held or feeding),
//!   [`crate::Campaigns::create`] after storing a campaign and [`crate::Campaigns::set_state`]
//!   after resuming one. A writer that stops between its script and the add leaves the work
//!   for the full pass.
//! - Removing is the feeder's, in this order: remove, then read the tenant's held, feeding and
//!   campaigns again, and add it back if any is left. Work stored before that read is seen by
//!   it; work stored after it is followed by its writer's add, which comes after the removal.
//! - The set names tenants, nothing secret; one key per namespace (`{ns}:busy-tenants`, its own
//!   slot: it is never in a script with a tenant's keys).

use crate::{Store, StoreError};

/// The set of tenants with work for the feeder. Cheap to clone.
#[derive(Debug, Clone)]
pub struct BusyTenants {
    store: Store,
}

impl BusyTenants {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    pub(crate) fn key(&self) -> String {
        format!("{}:busy-tenants", self.store.namespace())
    }

    /// Adds `tenant`.
    pub async fn mark(&self, tenant: &str) -> Result<(), StoreError> {
        self.change("SADD", tenant).await
    }

    /// Removes `tenant` (the feeder, before it reads the tenant's work again).
    pub async fn unmark(&self, tenant: &str) -> Result<(), StoreError> {
        self.change("SREM", tenant).await
    }

    /// `command` (SADD or SREM) of `tenant` on the set.
    async fn change(&self, command: &str, tenant: &str) -> Result<(), StoreError> {
        let mut conn = self.store.conn();
        let _: i64 = redis::cmd(command)
            .arg(self.key())
            .arg(tenant)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Every tenant in the set.
    pub async fn list(&self) -> Result<Vec<String>, StoreError> {
        let mut conn = self.store.conn();
        Ok(redis::cmd("SMEMBERS")
            .arg(self.key())
            .query_async(&mut conn)
            .await?)
    }
}

/// Marks `tenant` after a write of `store` that left it work (a held job, a campaign to feed);
/// a failure is logged and counted, not returned: the work is stored, and the feeder's full
/// pass finds it.
pub(crate) async fn mark_after_write(store: &Store, tenant: &str) {
    if let Err(e) = BusyTenants::new(store.clone()).mark(tenant).await {
        metrics::counter!("wxhub_store_busy_mark_failed_total").increment(1);
        tracing::warn!(tenant, error = %e, "cannot mark the tenant for the feeder; its next full pass finds the work");
    }
}
