//! The proactive schedule: every replica polls every tenant's `…:schedule` and refreshes what is
//! due before any caller needs it.
//!
//! Guarantee: a due entry is refreshed by one replica at a time, and an entry whose refresher
//! died comes back: it is claimed by pushing it back `claim_ms` atomically (a Lua script), then
//! refreshed through the same path as a caller's refresh (`refresh`), which writes its next due
//! time. Concurrency is bounded by `max_concurrent_refreshes`. A failure that will not pass by
//! itself is not retried at once: an unknown or revoked authorizer is dropped from the
//! schedule, a quota error waits for WeChat's reset (an hour for 45009, a minute for 45011), a
//! configuration problem ten minutes; a transient one comes back with the claim.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use wxhub_runtime::{ErrorCode, Tenant};

use super::credential::Credential;
use super::refresh::Tokens;
use super::shared::Shared;

/// How long a configuration problem waits before its entry is tried again.
const CONFIG_RETRY: Duration = Duration::from_secs(600);

/// The poller of one replica.
pub(crate) struct Schedule {
    s: Arc<Shared>,
    tokens: Arc<Tokens>,
    permits: Arc<Semaphore>,
    /// Entries claimed (or being claimed) by this replica and not yet finished.
    pending: AtomicUsize,
}

impl Schedule {
    pub(crate) fn new(s: Arc<Shared>, tokens: Arc<Tokens>) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(s.cfg.max_concurrent_refreshes)),
            s,
            tokens,
            pending: AtomicUsize::new(0),
        }
    }

    /// One poll of every tenant's schedule: claims due entries and refreshes them. Returns how
    /// many were claimed.
    pub(crate) async fn poll_once(self: &Arc<Self>) -> usize {
        let tenants = self.s.tenants.current();
        let cfg = &self.s.cfg;
        let mut claimed_total = 0;
        for tenant in tenants.iter() {
            loop {
                let now = self.s.now_ms();
                // Counted before the claim, so "nothing due and nothing pending" is never
                // observed while a claim is on its way back.
                let batch = cfg.poll_batch;
                self.pending.fetch_add(batch, Ordering::SeqCst);
                let until = now + i64::try_from(cfg.claim_ms).unwrap_or(30_000);
                let claimed = match self
                    .s
                    .creds
                    .claim_due(tenant.id.as_str(), now, until, batch)
                    .await
                {
                    Ok(c) => c,
                    Err(e) => {
                        self.pending.fetch_sub(batch, Ordering::SeqCst);
                        tracing::warn!(tenant = %tenant.id, error = %e, "cannot poll the schedule");
                        break;
                    }
                };
                let n = claimed.len();
                self.pending.fetch_sub(batch - n, Ordering::SeqCst);
                claimed_total += n;
                let mut claimed = claimed.into_iter();
                while let Some(member) = claimed.next() {
                    let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await else {
                        self.pending.fetch_sub(1 + claimed.len(), Ordering::SeqCst);
                        return claimed_total;
                    };
                    let (this, tenant) = (Arc::clone(self), Arc::clone(tenant));
                    tokio::spawn(async move {
                        this.refresh(&tenant, &member).await;
                        this.pending.fetch_sub(1, Ordering::SeqCst);
                        drop(permit);
                    });
                }
                if n < batch {
                    break;
                }
            }
        }
        claimed_total
    }

    /// Entries this replica claimed and has not finished refreshing.
    #[cfg(feature = "test-util")]
    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    /// Refreshes the claimed entry `member`; on a failure that will not pass by itself, drops
    /// or postpones it.
    async fn refresh(&self, tenant: &Arc<Tenant>, member: &str) {
        let creds = &self.s.creds;
        let Some(cred) = Credential::parse(member) else {
            tracing::warn!(tenant = %tenant.id, member, "unknown schedule entry; dropping it");
            let _ = creds.drop_tokens(tenant.id.as_str(), &[member]).await;
            return;
        };
        let deadline = Instant::now() + self.s.cfg.request_timeout();
        let Err(e) = self.tokens.refresh_due(tenant, &cred, deadline).await else {
            return;
        };
        let retry: Option<Duration> = match e.code() {
            // Gone for good: stop refreshing it.
            ErrorCode::NotFound => None,
            ErrorCode::FailedPrecondition if cred.authorizer().is_some() && e.revoked() => None,
            // Quota: wait for the limit to lift.
            ErrorCode::ResourceExhausted => Some(e.quota_wait().unwrap_or(Duration::from_secs(60))),
            // Configuration problems: an operator must act; do not hammer WeChat.
            ErrorCode::FailedPrecondition => Some(CONFIG_RETRY),
            // Transient: the claim brings it back after claim_ms.
            _ => return,
        };
        tracing::warn!(tenant = %tenant.id, credential = member, error = %e, "proactive refresh failed");
        let r = match retry {
            Some(wait) => {
                let at = self.s.now_ms() + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
                creds.schedule(tenant.id.as_str(), member, at, false).await
            }
            None => creds.drop_tokens(tenant.id.as_str(), &[member]).await,
        };
        if let Err(e) = r {
            tracing::warn!(tenant = %tenant.id, error = %e, "cannot reschedule");
        }
    }
}
