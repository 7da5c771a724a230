//! Reconcile: the authorizers of a component tenant brought in line with WeChat's
//! `api_get_authorizer_list` (accounts and their refresh tokens).
//!
//! Guarantee: a refresh token rotated after a reconcile started is never replaced by the list's
//! older view: the fence is taken before WeChat is asked, and the store keeps the value of the
//! newest fence. Accounts missing from the list are not revoked (paging can skip entries while
//! the list changes). New accounts get their first refresh spread over `reconcile_spread_ms`.
//! In one replica a tenant has one reconcile at a time (single-flight); across replicas the
//! periodic one runs once per period (a guard key). A reconcile that completes marks the store
//! epoch it started under healed: a complete list stored after a loss is what healing needs
//! (see `recovery`).
//!
//! It runs at start and every `reconcile_interval_ms`, on 61023, on `SyncAuthorizers`, for an
//! unknown authorizer and after a store loss.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use rand::RngExt;
use wxhub_runtime::{Tenant, TenantKind};
use wxhub_store::authorizers::Listed;

use super::component::{TokenSource, with_component_token};
use super::flight::SingleFlight;
use super::shared::Shared;
use crate::error::Error;

/// What a reconcile did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReconcileSummary {
    pub listed: u64,
    pub authorized: u64,
    pub refresh_tokens: u64,
}

/// How long the periodic reconcile may take.
const PERIODIC_DEADLINE: Duration = Duration::from_secs(300);

/// The reconciles of this replica.
pub(crate) struct Reconciler {
    s: Arc<Shared>,
    flights: SingleFlight<String, Result<ReconcileSummary, Error>>,
}

impl Reconciler {
    pub(crate) fn new(s: Arc<Shared>) -> Self {
        Self {
            s,
            flights: SingleFlight::new(|e| Err(Error::Internal(format!("reconcile failed: {e}")))),
        }
    }

    /// Reconciles `tenant` (joining the reconcile of it in flight in this replica).
    pub(crate) async fn reconcile(
        self: &Arc<Self>,
        tokens: &dyn TokenSource,
        tenant: &Arc<Tenant>,
        deadline: Instant,
    ) -> Result<ReconcileSummary, Error> {
        if tenant.kind != TenantKind::Component {
            return Err(Error::NotComponent {
                tenant: tenant.id.to_string(),
                kind: tenant.kind,
            });
        }
        let work = Arc::clone(self).run_owned(tokens.owned(), Arc::clone(tenant), deadline);
        self.flights
            .join(&tenant.id.to_string(), deadline, work)
            .await
            .unwrap_or(Err(Error::Deadline(
                "deadline exceeded during the reconcile",
            )))
    }

    /// [`Reconciler::run`] as the future of a flight's task, owning what it uses.
    fn run_owned(
        self: Arc<Self>,
        tokens: Arc<dyn TokenSource>,
        tenant: Arc<Tenant>,
        deadline: Instant,
    ) -> BoxFuture<'static, Result<ReconcileSummary, Error>> {
        async move { self.run(&*tokens, &tenant, deadline).await }.boxed()
    }

    /// One reconcile, marking the epoch seen before it started healed once it completed.
    async fn run(
        &self,
        tokens: &dyn TokenSource,
        tenant: &Arc<Tenant>,
        deadline: Instant,
    ) -> Result<ReconcileSummary, Error> {
        let creds = &self.s.creds;
        let epoch = creds.epoch(tenant.id.as_str(), self.s.now_ms()).await?;
        let summary = self.list(tokens, tenant, deadline).await?;
        if epoch.healed_at_ms.is_none()
            && creds
                .mark_healed(tenant.id.as_str(), &epoch.id, self.s.now_ms())
                .await?
        {
            tracing::info!(tenant = %tenant.id, "store healed: the authorizers are listed again");
        }
        Ok(summary)
    }

    /// Stores every page of the list.
    async fn list(
        &self,
        tokens: &dyn TokenSource,
        tenant: &Arc<Tenant>,
        deadline: Instant,
    ) -> Result<ReconcileSummary, Error> {
        // The fence is taken before WeChat is asked, so a refresh token rotated after this
        // point (newer fence) is never replaced by the list's older view.
        let fence = self.s.creds.next_fence(tenant.id.as_str()).await?;
        self.s.memory.saw_fence(tenant.id.as_str(), fence);
        let event_ms = self.s.now_ms();
        let spread = i64::try_from(self.s.cfg.reconcile_spread_ms).unwrap_or(i64::MAX);
        let mut summary = ReconcileSummary::default();
        let mut offset = 0u64;
        loop {
            let api = self.s.api.until(deadline);
            let page = with_component_token(tokens, tenant, deadline, |token| {
                let api = &api;
                async move {
                    api.get_authorizer_list(&token, &tenant.app_id, offset, 500)
                        .await
                        .map_err(|e| Error::wechat("listing the authorizers", e))
                }
            })
            .await?;
            let now = self.s.now_ms();
            let entries: Vec<Listed<'_>> = page
                .list
                .iter()
                .map(|l| Listed {
                    appid: &l.authorizer_appid,
                    refresh_token: l.refresh_token.as_ref(),
                    due_ms: now + rand::rng().random_range(0..spread),
                })
                .collect();
            let counts = self
                .s
                .auths
                .reconcile(tenant.id.as_str(), event_ms, now, fence, &entries)
                .await?;
            summary.listed += page.list.len() as u64;
            summary.authorized += counts.authorized;
            summary.refresh_tokens += counts.refresh_tokens;
            offset += page.list.len() as u64;
            if page.list.is_empty() || offset >= page.total_count {
                break;
            }
        }
        metrics::counter!("wxhub_reconciles_total", "tenant" => tenant.id.to_string()).increment(1);
        metrics::counter!("wxhub_reconcile_refresh_tokens_total", "tenant" => tenant.id.to_string())
            .increment(summary.refresh_tokens);
        tracing::info!(
            tenant = %tenant.id,
            listed = summary.listed,
            authorized = summary.authorized,
            refresh_tokens = summary.refresh_tokens,
            "authorizers reconciled"
        );
        Ok(summary)
    }

    /// How long a reconcile keeps the other replicas from reconciling the tenant again.
    pub(crate) fn guard_ttl(&self) -> Duration {
        Duration::from_millis((self.s.cfg.reconcile_interval_ms * 9 / 10).max(1000))
    }

    /// Reconciles every component tenant unless another replica did recently; whether all
    /// succeeded.
    pub(crate) async fn all_guarded(self: &Arc<Self>, tokens: &dyn TokenSource) -> bool {
        let tenants = self.s.tenants.current();
        let guard_ttl = self.guard_ttl();
        let mut all_ok = true;
        for tenant in tenants.iter().filter(|t| t.kind == TenantKind::Component) {
            match self
                .s
                .creds
                .guard(tenant.id.as_str(), "reconcile", guard_ttl)
                .await
            {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(tenant = %tenant.id, error = %e, "cannot take the reconcile guard");
                    all_ok = false;
                    continue;
                }
            }
            let deadline = Instant::now() + PERIODIC_DEADLINE;
            if let Err(e) = self.reconcile(tokens, tenant, deadline).await {
                tracing::warn!(tenant = %tenant.id, error = %e, "reconcile failed; retrying later");
                let _ = self
                    .s
                    .creds
                    .clear_marker(tenant.id.as_str(), "reconcile", "1")
                    .await;
                all_ok = false;
            }
        }
        all_ok
    }
}
