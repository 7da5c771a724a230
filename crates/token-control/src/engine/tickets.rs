//! component_verify_tickets: stored as WeChat pushes them, watched for age, asked for when
//! missing, and reported to readiness.
//!
//! Guarantee: a pushed ticket is stored unless a newer push (by `CreateTime`) already is, and
//! then it is what the next component token fetch uses (a component token that could not be
//! fetched for lack of one is made due at once). A missing or stale ticket makes one replica
//! ask WeChat to push (`api_start_push_ticket`), at most once per `push_ticket_interval_ms` per
//! tenant across replicas (a guard key), and not while the store was only just found without
//! its state: replicas may still write their ticket back then (see `recovery`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use wxhub_runtime::{Secret, Tenant, TenantKind};
use wxhub_store::{Epoch, TicketRecord};

use super::credential::{Credential, TICKET_VALIDITY_MS, ticket_valid};
use super::shared::Shared;
use crate::error::Error;

/// Poll period while waiting for a ticket.
const TICKET_POLL: Duration = Duration::from_millis(200);

/// The tickets of every component tenant.
pub(crate) struct Tickets {
    s: Arc<Shared>,
}

impl Tickets {
    pub(crate) fn new(s: Arc<Shared>) -> Self {
        Self { s }
    }

    /// Stores a pushed ticket received at `now` (a newer push wins) and remembers it for a
    /// write-back; a component token missing for lack of a ticket is made due at once.
    pub(crate) async fn store(
        &self,
        tenant: &Tenant,
        ticket: &str,
        create_time: i64,
        now: i64,
    ) -> Result<(), Error> {
        let stored = self
            .s
            .creds
            .store_ticket(tenant.id.as_str(), ticket, create_time, now)
            .await?;
        metrics::counter!("wxhub_tickets_received_total", "tenant" => tenant.id.to_string())
            .increment(1);
        if stored {
            self.s.memory.hold_ticket(
                tenant.id.as_str(),
                &TicketRecord {
                    value: Secret::new(ticket),
                    create_time,
                    received_at_ms: now,
                },
            );
            metrics::gauge!("wxhub_ticket_age_seconds", "tenant" => tenant.id.to_string()).set(0.0);
            let name = Credential::Component.name();
            if self
                .s
                .creds
                .token(tenant.id.as_str(), &name)
                .await?
                .is_none()
            {
                self.s
                    .creds
                    .schedule(tenant.id.as_str(), &name, now, false)
                    .await?;
            }
        }
        Ok(())
    }

    /// Waits until a ticket still valid is stored (true) or `until` passes (false).
    pub(crate) async fn wait_until_valid(&self, tenant: &Tenant, until: Instant) -> bool {
        loop {
            if let Ok(Some(t)) = self.s.creds.ticket(tenant.id.as_str()).await
                && ticket_valid(&t, self.s.now_ms())
            {
                return true;
            }
            if Instant::now() + TICKET_POLL >= until {
                return false;
            }
            tokio::time::sleep(TICKET_POLL).await;
        }
    }

    /// Whether the store was found without this tenant's state so recently (and not healed
    /// since) that running replicas may still write their ticket back
    /// (`heal_ticket_grace_ms`).
    pub(crate) fn in_grace(&self, epoch: &Epoch) -> bool {
        let grace = i64::try_from(self.s.cfg.heal_ticket_grace_ms).unwrap_or(i64::MAX);
        epoch.healed_at_ms.is_none() && self.s.now_ms() < epoch.created_at_ms + grace
    }

    /// Asks WeChat to (re)start pushing tickets, at most once per `push_ticket_interval_ms`
    /// per tenant across replicas, and not while replicas may still write a ticket back into a
    /// store found empty.
    pub(crate) async fn request_push(&self, tenant: &Tenant) {
        let deferred = match self
            .s
            .creds
            .epoch(tenant.id.as_str(), self.s.now_ms())
            .await
        {
            Ok(epoch) => self.in_grace(&epoch),
            // Unknown is treated as in grace: a Redis that failed this read may be one that just
            // restarted empty, and the next check (seconds later) asks again. Pushing here let a
            // read that failed, then a guard that succeeded once Redis was back, ask for a push
            // the grace exists to prevent (seen once in 13 runs of chaos scenario 2b).
            Err(e) => {
                tracing::warn!(tenant = %tenant.id, error = %e, "cannot read the store's epoch; ticket push deferred");
                true
            }
        };
        if deferred {
            tracing::debug!(
                tenant = %tenant.id,
                "ticket push deferred: replicas may still write their ticket back"
            );
            return;
        }
        let interval = Duration::from_millis(self.s.cfg.push_ticket_interval_ms);
        match self
            .s
            .creds
            .guard(tenant.id.as_str(), "push-ticket", interval)
            .await
        {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(tenant = %tenant.id, error = %e, "cannot take the push-ticket guard");
                return;
            }
        }
        let result = self
            .s
            .api
            .start_push_ticket(&tenant.app_id, &tenant.app_secret)
            .await;
        let label = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!("wxhub_ticket_push_requests_total", "tenant" => tenant.id.to_string(), "result" => label)
            .increment(1);
        match result {
            Ok(()) => tracing::info!(
                tenant = %tenant.id,
                "asked WeChat to push a component_verify_ticket"
            ),
            Err(e) => {
                tracing::warn!(tenant = %tenant.id, error = %e, "api_start_push_ticket failed");
                let _ = self
                    .s
                    .creds
                    .clear_marker(tenant.id.as_str(), "push-ticket", "1")
                    .await;
            }
        }
    }

    /// Checks every component tenant's ticket: records its age and asks for a push when it is
    /// missing or stale.
    pub(crate) async fn check(&self) {
        let tenants = self.s.tenants.current();
        for tenant in tenants.iter().filter(|t| t.kind == TenantKind::Component) {
            match self.s.creds.ticket(tenant.id.as_str()).await {
                Ok(Some(t)) => {
                    self.s.memory.hold_ticket(tenant.id.as_str(), &t);
                    let age = self.s.now_ms() - t.received_at_ms;
                    metrics::gauge!("wxhub_ticket_age_seconds", "tenant" => tenant.id.to_string())
                        .set(age as f64 / 1000.0);
                    if age > i64::try_from(self.s.cfg.ticket_stale_ms).unwrap_or(i64::MAX) {
                        self.request_push(tenant).await;
                    }
                }
                Ok(None) => self.request_push(tenant).await,
                Err(e) => tracing::warn!(tenant = %tenant.id, error = %e, "cannot read the ticket"),
            }
        }
    }

    /// Readiness detail: every component tenant has a ticket younger than 12 h (`Err` lists
    /// the tenants that do not).
    pub(crate) async fn readiness(&self) -> Result<String, String> {
        let tenants = self.s.tenants.current();
        let mut problems = Vec::new();
        let mut ok = 0;
        for tenant in tenants.iter().filter(|t| t.kind == TenantKind::Component) {
            match self.s.creds.ticket(tenant.id.as_str()).await {
                Ok(Some(t)) if self.s.now_ms() - t.received_at_ms < TICKET_VALIDITY_MS => ok += 1,
                Ok(Some(t)) => problems.push(format!(
                    "{}: ticket is {} min old",
                    tenant.id,
                    (self.s.now_ms() - t.received_at_ms) / 60_000
                )),
                Ok(None) => problems.push(format!("{}: no component_verify_ticket", tenant.id)),
                Err(e) => problems.push(format!("{}: {e}", tenant.id)),
            }
        }
        if problems.is_empty() {
            Ok(format!("{ok} component tenant(s) with a fresh ticket"))
        } else {
            problems.sort();
            Err(problems.join("; "))
        }
    }
}
