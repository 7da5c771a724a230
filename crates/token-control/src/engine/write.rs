//! The fenced write of a token, under its refresh lease: the one way a token issued by WeChat
//! gets into the store, for refreshes (`refresh`) and for the token that comes with an
//! authorization code (`exchange`).
//!
//! Guarantee: a token is stored only by the holder of the credential's lease, and never over a
//! token written under a newer fence (one Lua script, `Credentials::write_token`); a refresh
//! token WeChat rotated is persisted by compare-and-set on the one used, whatever the token
//! write's fate; nothing is stored for a revoked authorizer. A written token is dropped from the
//! read cache and remembered for a write-back after a store loss (`memory`).
//!
//! The due time of the next refresh is `refresh_at` ± `refresh_jitter` of the lifetime WeChat
//! returned; for an answer that repeats the stored token (stable_token's normal mode), the
//! token's expiry on WeChat's side, since no other token is issued before it.

use std::sync::Arc;

use rand::RngExt;
use wxhub_runtime::Tenant;
use wxhub_store::credentials::TokenWrite;
use wxhub_store::{Lease, TokenRecord, WriteOutcome};

use super::credential::{Credential, Issued, Token};
use super::shared::Shared;
use crate::error::Error;

/// Writes tokens under their leases.
pub(crate) struct Writer {
    s: Arc<Shared>,
}

impl Writer {
    pub(crate) fn new(s: Arc<Shared>) -> Self {
        Self { s }
    }

    /// The lease of the credential `name` (with a fresh fence), or `None` while another holder
    /// has it.
    pub(crate) async fn lease(&self, tenant: &Tenant, name: &str) -> Result<Option<Lease>, Error> {
        let lease = self
            .s
            .creds
            .acquire(tenant.id.as_str(), name, self.s.cfg.lock_ttl())
            .await?;
        if let Some(lease) = &lease {
            self.s.memory.saw_fence(tenant.id.as_str(), lease.fence);
        }
        Ok(lease)
    }

    /// Stores `issued` (asked for at `started`) under `lease`, fenced: `Ok(None)` when the
    /// write was refused because a newer token exists. The expiry counts from before the call
    /// (never later than WeChat's); see the module docs for the due time. A written token is
    /// remembered for a write-back after a loss.
    pub(crate) async fn write(
        &self,
        tenant: &Tenant,
        cred: &Credential,
        lease: &Lease,
        issued: Issued,
        started: i64,
        stored: Option<&TokenRecord>,
    ) -> Result<Option<Token>, Error> {
        let finished = self.s.now_ms();
        let lifetime_ms = i64::try_from(issued.expires_in)
            .unwrap_or(7200)
            .saturating_mul(1000);
        let expires_at_ms = started + lifetime_ms;
        // WeChat answering with the token already stored (or stable_token, which always does
        // until that token expires) gives no other one before it expires on WeChat's side:
        // `expires_in` after the answer, plus the second it rounds down. Ask again then, and
        // serve this one with its true expiry until then. Any other token is refreshed at
        // `refresh_at` of the lifetime it was actually issued with.
        let same =
            issued.idempotent || stored.is_some_and(|t| t.value.expose() == issued.token.expose());
        let due_ms = if same {
            finished + lifetime_ms + 1000
        } else {
            started + self.due_after(lifetime_ms)
        };
        let report = self
            .s
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
                    refresh_token: issued
                        .refresh
                        .as_ref()
                        .map(|(used, returned)| (used, returned)),
                },
            )
            .await?;
        if report.refresh_token_rotated {
            metrics::counter!("wxhub_refresh_token_rotations_total").increment(1);
        }
        match report.outcome {
            WriteOutcome::Written => {
                self.s.cache.evict(tenant.id.as_str(), cred);
                self.s.memory.hold_token(
                    tenant.id.as_str(),
                    &lease.credential,
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
                    issued_at_ms: started,
                }))
            }
            outcome @ (WriteOutcome::LostLease | WriteOutcome::StaleFence) => {
                metrics::counter!("wxhub_token_stale_writes_refused_total", "credential" => cred.kind())
                    .increment(1);
                tracing::warn!(
                    tenant = %tenant.id,
                    credential = %lease.credential,
                    ?outcome,
                    refresh_token_kept = report.refresh_token_rotated,
                    "fenced write refused: a newer token exists"
                );
                Ok(None)
            }
            WriteOutcome::Revoked => Err(Error::RevokedMeanwhile),
        }
    }

    /// Stores a token WeChat issued outside a refresh (the one that comes with an
    /// authorization code, asked for at `started`): under the lease and fenced like a
    /// refresh's. When a refresh holds the lease now, the credential is made due at once
    /// instead, so the schedule fetches a new one; a token refused by the write is dropped.
    pub(crate) async fn store_issued(
        &self,
        tenant: &Tenant,
        cred: &Credential,
        issued: Issued,
        started: i64,
    ) -> Result<(), Error> {
        let name = cred.name();
        let Some(lease) = self.lease(tenant, &name).await? else {
            self.s
                .creds
                .schedule(tenant.id.as_str(), &name, self.s.now_ms(), false)
                .await?;
            return Ok(());
        };
        let written = self
            .write(tenant, cred, &lease, issued, started, None)
            .await;
        self.release(&lease).await;
        match written {
            Ok(_) | Err(Error::RevokedMeanwhile) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Releases `lease` (compare-and-delete); a failure only leaves it to expire.
    pub(crate) async fn release(&self, lease: &Lease) {
        if let Err(e) = self.s.creds.release(lease).await {
            tracing::warn!(tenant = %lease.tenant, credential = %lease.credential, error = %e, "lease release failed; it expires by itself");
        }
    }

    /// Delay of the next proactive refresh: `refresh_at` ± jitter of the lifetime.
    fn due_after(&self, lifetime_ms: i64) -> i64 {
        let (at, jitter) = (self.s.cfg.refresh_at, self.s.cfg.refresh_jitter);
        let fraction = if jitter > 0.0 {
            rand::rng().random_range(at - jitter..at + jitter)
        } else {
            at
        };
        (lifetime_ms as f64 * fraction) as i64
    }
}
