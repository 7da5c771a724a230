//! Component notices, applied once: tickets are stored, authorizations exchanged and stored,
//! revocations applied.
//!
//! Guarantee: a notice is applied at most once per message id while the ledger remembers it (a
//! day; the handlers are idempotent anyway), only in `CreateTime` order (the store's scripts
//! refuse an older event), and never when it is dated more than `create_time_skew_ms` after
//! this service's clock (acked and counted in `wxhub_token_events_future_total`: no real notice
//! comes from the future, and applying it would push a stored ordering time ahead of every real
//! event). An error means nothing was recorded, so a redelivery applies it again.
//!
//! - `component_verify_ticket` → stored (a newer push wins).
//! - `authorized` / `updateauthorized` → the shared pre-auth code it names is retired; the code
//!   is exchanged (once, whichever path presents it first). Without a usable ticket the
//!   exchange waits for one (up to `request_timeout_ms`) and tries once more; a code WeChat
//!   will not exchange (expired, used through a path we cannot see) falls back to a reconcile,
//!   since WeChat's list has the refresh token.
//! - `unauthorized` → the authorizer is marked revoked and its tokens dropped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wxhub_message::{Authorization, ComponentNotice};
use wxhub_runtime::{ErrorCode, Tenant};
use wxhub_store::{AuthorizerStatus, Ledger};

use super::authorizers::AuthorizerRecords;
use super::exchange::{Exchange, ExchangeBy};
use super::pre_auth::{self, PreAuth};
use super::reconcile::Reconciler;
use super::refresh::Tokens;
use super::shared::Shared;
use super::tickets::Tickets;
use crate::error::Error;

/// How long an applied message id is remembered.
const LEDGER_TTL: Duration = Duration::from_secs(24 * 3600);

/// What applying a notice came to (each is acknowledged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Applied, and recorded as applied.
    Done,
    /// The same message was applied before: nothing done.
    Duplicate,
    /// Dated beyond the allowed skew after this service's clock: ignored.
    FromTheFuture,
}

/// The rooms a notice changes (wired by the engine).
pub(crate) struct Notices {
    pub(super) s: Arc<Shared>,
    /// Applied message ids.
    pub(super) ledger: Ledger,
    pub(super) tokens: Arc<Tokens>,
    pub(super) tickets: Arc<Tickets>,
    pub(super) reconciler: Arc<Reconciler>,
    pub(super) authorizers: Arc<AuthorizerRecords>,
    pub(super) exchange: Arc<Exchange>,
    pub(super) pre_auth: Arc<PreAuth>,
}

/// A fixed label for a notice type (never the attacker-chosen InfoType of an unknown notice).
fn kind_label(notice: &ComponentNotice) -> &'static str {
    match notice {
        ComponentNotice::VerifyTicket { .. } => "component_verify_ticket",
        ComponentNotice::Authorized(_) => "authorized",
        ComponentNotice::UpdateAuthorized(_) => "updateauthorized",
        ComponentNotice::Unauthorized { .. } => "unauthorized",
        ComponentNotice::Notify(_) | ComponentNotice::Other { .. } => "other",
    }
}

impl Notices {
    /// Applies `notice` of the component `tenant`, delivered as message `message_id`.
    pub(crate) async fn apply(
        &self,
        tenant: &Arc<Tenant>,
        message_id: &str,
        notice: &ComponentNotice,
    ) -> Result<Applied, Error> {
        let now = self.s.now_ms();
        let skew = self.s.cfg.create_time_skew_ms;
        if notice.create_time().saturating_mul(1000) > now.saturating_add_unsigned(skew) {
            metrics::counter!("wxhub_token_events_future_total", "info_type" => kind_label(notice))
                .increment(1);
            tracing::warn!(
                tenant = %tenant.id,
                info_type = kind_label(notice),
                create_time = notice.create_time(),
                now_ms = now,
                skew_ms = skew,
                "notice dated in the future beyond the allowed skew; ignored"
            );
            return Ok(Applied::FromTheFuture);
        }
        if self.ledger.applied(tenant.id.as_str(), message_id).await? {
            tracing::debug!(tenant = %tenant.id, message_id, "duplicate event; already applied");
            return Ok(Applied::Duplicate);
        }
        match notice {
            ComponentNotice::VerifyTicket {
                ticket,
                create_time,
                ..
            } => {
                self.tickets
                    .store(tenant, ticket, *create_time, now)
                    .await?
            }
            ComponentNotice::Authorized(a) | ComponentNotice::UpdateAuthorized(a) => {
                let record = self.authorized(tenant, a).await?;
                tracing::info!(tenant = %tenant.id, appid = %record, info_type = notice.info_type(), "authorizer stored");
            }
            ComponentNotice::Unauthorized {
                authorizer_appid,
                create_time,
                ..
            } => {
                let event_ms = create_time.saturating_mul(1000);
                let changed = self
                    .authorizers
                    .revoke(tenant, authorizer_appid, event_ms, "unauthorized")
                    .await?;
                tracing::info!(tenant = %tenant.id, appid = %authorizer_appid, changed, "authorizer revoked");
            }
            other => {
                tracing::info!(
                    tenant = %tenant.id,
                    info_type = other.info_type(),
                    "notice not for token-control; acknowledged"
                );
            }
        }
        if let Err(e) = self
            .ledger
            .record(tenant.id.as_str(), message_id, LEDGER_TTL)
            .await
        {
            // Applied but not recorded: a redelivery applies it again, which is harmless.
            tracing::warn!(tenant = %tenant.id, error = %e, "cannot mark the event applied");
        }
        Ok(Applied::Done)
    }

    /// An authorization: the appid stored.
    async fn authorized(&self, tenant: &Arc<Tenant>, a: &Authorization) -> Result<String, Error> {
        // The pre-auth code of this authorization is used up: stop handing it out.
        if !a.pre_auth_code.is_empty() {
            let marker = pre_auth::marker(&a.pre_auth_code);
            self.pre_auth.retire(tenant, &marker, "notice").await;
        }
        let event_ms = Some(a.create_time.saturating_mul(1000));
        let exchange = |deadline| {
            self.exchange.exchange(
                tenant,
                &a.authorization_code,
                ExchangeBy::Event,
                event_ms,
                deadline,
            )
        };
        let wait = self.s.cfg.request_timeout();
        let mut deadline = Instant::now() + wait;
        let mut result = exchange(deadline).await;
        if matches!(&result, Err(e) if e.no_ticket())
            && self
                .tickets
                .wait_until_valid(tenant, Instant::now() + wait)
                .await
        {
            deadline = Instant::now() + wait;
            result = exchange(deadline).await;
        }
        match result {
            Ok(record) => Ok(record.appid),
            // No ticket yet (WeChat was asked for one): the code is fine, the caller tries
            // again later.
            Err(e) if e.no_ticket() => Err(e),
            // The code expired or was used by a path we cannot see: WeChat's list has the
            // refresh token.
            Err(e) if e.code() == ErrorCode::FailedPrecondition => {
                tracing::warn!(tenant = %tenant.id, appid = %a.authorizer_appid, error = %e, "code not exchangeable; reconciling");
                self.reconciler
                    .reconcile(&self.tokens, tenant, deadline)
                    .await?;
                match self.authorizers.record(tenant, &a.authorizer_appid).await {
                    Ok(r) if r.status == AuthorizerStatus::Authorized => Ok(r.appid),
                    Ok(_) | Err(Error::UnknownAuthorizer(_)) => Err(Error::NotStored {
                        appid: a.authorizer_appid.clone(),
                        cause: Box::new(e),
                    }),
                    Err(other) => Err(other),
                }
            }
            Err(e) => Err(e),
        }
    }
}
