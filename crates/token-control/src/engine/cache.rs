//! The in-process read cache: token records this replica read from Redis, kept for
//! `cache_ttl_ms` (1 s by default; 0 turns it off) so a hot credential is served without a
//! Redis round trip.
//!
//! Guarantee: a record is served from here only while it is younger than the TTL; a write or an
//! invalidation through this replica drops it at once (another replica's write shows after at
//! most the TTL, documented in docs/token-control.md). The lookup is the hot path of every
//! token read: it takes a read lock, looks up tenant then credential without allocating, and
//! hands the caller a reference, so nothing is cloned unless the caller keeps something.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant};

use wxhub_store::TokenRecord;

use super::credential::Credential;

/// The cached records of one tenant: credential → (record, read at).
type TenantCache = HashMap<Credential, (TokenRecord, Instant)>;

/// Cached records by tenant.
pub(crate) struct Cache {
    /// Zero: off.
    ttl: Duration,
    tenants: RwLock<HashMap<String, TenantCache>>,
}

impl Cache {
    pub(crate) fn new(ttl_ms: u64) -> Self {
        Self {
            ttl: Duration::from_millis(ttl_ms),
            tenants: RwLock::default(),
        }
    }

    /// What `take` makes of the cached record of `cred`, while it is fresh.
    pub(crate) fn cached<T>(
        &self,
        tenant: &str,
        cred: &Credential,
        take: impl FnOnce(&TokenRecord) -> Option<T>,
    ) -> Option<T> {
        if self.ttl.is_zero() {
            return None;
        }
        let tenants = self.tenants.read().unwrap_or_else(PoisonError::into_inner);
        let (record, at) = tenants.get(tenant)?.get(cred)?;
        if at.elapsed() < self.ttl {
            take(record)
        } else {
            None
        }
    }

    /// Caches `record` as just read.
    pub(crate) fn put(&self, tenant: &str, cred: &Credential, record: &TokenRecord) {
        if self.ttl.is_zero() {
            return;
        }
        self.tenants
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(tenant.to_owned())
            .or_default()
            .insert(cred.clone(), (record.clone(), Instant::now()));
    }

    /// Drops the cached record of `cred`.
    pub(crate) fn evict(&self, tenant: &str, cred: &Credential) {
        if self.ttl.is_zero() {
            return;
        }
        if let Some(t) = self
            .tenants
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(tenant)
        {
            t.remove(cred);
        }
    }
}
