//! Consumer of `{ns}.token-control`: component notices published by the gateway.
//!
//! - `component_verify_ticket` → stored (a newer push wins).
//! - `authorized` / `updateauthorized` → the shared pre-auth code it names is retired (see
//!   [`crate::pre_auth`]); the code is exchanged (`api_query_auth`) and the authorizer stored
//!   with its refresh token, token and schedule entry. A code already exchanged through the
//!   redirect is answered from that exchange; an expired one falls back to a reconcile from
//!   `api_get_authorizer_list`.
//! - `unauthorized` → the authorizer is marked revoked and its tokens dropped.
//!
//! A message is acked only after its store write succeeded; Redis or WeChat being down
//! requeues it; a malformed message is dead-lettered with the reason. Each applied message id
//! is remembered for a day, so the rare duplicate (same `message_id`) is acked without effect
//! (the handlers are idempotent anyway).
//!
//! A notice dated more than `create_time_skew_ms` after this service's clock is acked and
//! ignored (counted in `wxhub_token_events_future_total`): no real notice comes from the future,
//! and applying it would push a stored ordering time ahead of every real event.
//!
//! An authorization that cannot be exchanged because there is no usable ticket yet is not a bad
//! code: the handler waits for a ticket (up to `request_timeout_ms`) and exchanges it then, else
//! requeues it, and only on the queue's last delivery dead-letters it with that reason.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use wxhub_bus::{Outcome, Received};
use wxhub_message::{ComponentNotice, parse_notice};
use wxhub_proto::events::v1::CallbackEvent;
use wxhub_runtime::{ErrorCode, Secret, TenantKind};
use wxhub_store::{AuthorizerStatus, TicketRecord};

use crate::engine::{Credential, Engine, ExchangeBy};
use crate::error::{Error, Reason};
use crate::pre_auth;

/// How long an applied message id is remembered.
const CONSUMED_TTL: Duration = Duration::from_secs(24 * 3600);

/// Poll period while an authorization waits for a ticket.
const TICKET_POLL: Duration = Duration::from_millis(200);

/// Handles one delivery of a queue that dead-letters after `delivery_limit` deliveries.
pub async fn handle(engine: Arc<Engine>, msg: Received, delivery_limit: u32) -> Outcome {
    let outcome = handle_inner(&engine, &msg, delivery_limit).await;
    let label = match &outcome {
        Outcome::Ack => "ack",
        Outcome::Requeue => "requeue",
        Outcome::DeadLetter(_) => "dead_letter",
    };
    metrics::counter!("wxhub_token_events_total", "outcome" => label).increment(1);
    outcome
}

fn retry_or_dead(e: &Error, what: &str) -> Outcome {
    if e.code.is_retryable() || e.code == ErrorCode::DeadlineExceeded {
        tracing::warn!(error = %e, what, "transient failure; requeueing");
        Outcome::Requeue
    } else {
        Outcome::DeadLetter(format!("{what}: {e}"))
    }
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

/// Waits until a ticket still valid is stored (true) or `until` passes (false).
async fn wait_for_ticket(engine: &Engine, tenant: &str, until: Instant) -> bool {
    loop {
        if let Ok(Some(t)) = engine.credentials().ticket(tenant).await
            && crate::engine::ticket_valid(&t, engine.now_ms())
        {
            return true;
        }
        if Instant::now() + TICKET_POLL >= until {
            return false;
        }
        tokio::time::sleep(TICKET_POLL).await;
    }
}

async fn handle_inner(engine: &Arc<Engine>, msg: &Received, delivery_limit: u32) -> Outcome {
    let event = match CallbackEvent::decode(msg.body.as_slice()) {
        Ok(e) => e,
        Err(e) => return Outcome::DeadLetter(format!("not a CallbackEvent: {e}")),
    };
    let tid = event.tenant.as_str();
    let Some(tenant) = engine.tenants().current().get(tid).cloned() else {
        return Outcome::DeadLetter(format!("unknown tenant {tid:?}"));
    };
    if tenant.kind != TenantKind::Component {
        return Outcome::DeadLetter(format!("tenant {tid:?} is not a component"));
    }
    let notice = match parse_notice(&event.xml) {
        Ok(n) => n,
        Err(e) => return Outcome::DeadLetter(format!("unparsable notice: {e}")),
    };
    if notice.app_id() != tenant.app_id {
        return Outcome::DeadLetter(format!(
            "notice for component {:?}, tenant {tid:?} is {:?}",
            notice.app_id(),
            tenant.app_id
        ));
    }
    let now = engine.now_ms();
    let skew = engine.config().create_time_skew_ms;
    if notice.create_time().saturating_mul(1000) > now.saturating_add_unsigned(skew) {
        metrics::counter!("wxhub_token_events_future_total", "info_type" => kind_label(&notice))
            .increment(1);
        tracing::warn!(
            tenant = tid,
            info_type = kind_label(&notice),
            create_time = notice.create_time(),
            now_ms = now,
            skew_ms = skew,
            "notice dated in the future beyond the allowed skew; ignored"
        );
        return Outcome::Ack;
    }
    let message_id = msg
        .message_id
        .clone()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| notice.dedupe_key());
    let creds = engine.credentials();
    match creds.consumed(tid, &message_id).await {
        Ok(true) => {
            tracing::debug!(tenant = tid, message_id, "duplicate event; already applied");
            return Outcome::Ack;
        }
        Ok(false) => {}
        Err(e) => return retry_or_dead(&e.into(), "checking the event marker"),
    }
    let applied: Result<(), Error> = match &notice {
        ComponentNotice::VerifyTicket {
            ticket,
            create_time,
            ..
        } => store_ticket(engine, tid, ticket, *create_time, now).await,
        ComponentNotice::Authorized(a) | ComponentNotice::UpdateAuthorized(a) => {
            // The pre-auth code of this authorization is used up: stop handing it out.
            if !a.pre_auth_code.is_empty() {
                pre_auth::retire(engine, tid, &pre_auth::marker(&a.pre_auth_code), "notice").await;
            }
            let exchange = |deadline| {
                engine.exchange_auth_code(
                    tid,
                    &a.authorization_code,
                    ExchangeBy::Event,
                    Some(a.create_time.saturating_mul(1000)),
                    deadline,
                )
            };
            let wait = engine.config().request_timeout();
            let mut deadline = Instant::now() + wait;
            let mut result = exchange(deadline).await;
            if matches!(&result, Err(e) if e.reason == Some(Reason::NoTicket))
                && wait_for_ticket(engine, tid, Instant::now() + wait).await
            {
                deadline = Instant::now() + wait;
                result = exchange(deadline).await;
            }
            match result {
                Ok(record) => {
                    tracing::info!(tenant = tid, appid = %record.appid, info_type = notice.info_type(), "authorizer stored");
                    Ok(())
                }
                // No ticket yet (WeChat was asked for one): the code is fine, try again later.
                Err(e) if e.reason == Some(Reason::NoTicket) => {
                    if msg.delivery_count + 1 < u64::from(delivery_limit) {
                        tracing::warn!(tenant = tid, appid = %a.authorizer_appid, delivery = msg.delivery_count + 1, "no component_verify_ticket yet; requeueing the authorization");
                        return Outcome::Requeue;
                    }
                    return Outcome::DeadLetter(format!(
                        "{}: no usable component_verify_ticket in {delivery_limit} deliveries: {e}",
                        notice.info_type()
                    ));
                }
                // The code expired or was used by a path we cannot see: WeChat's list has the
                // refresh token.
                Err(e) if e.code == ErrorCode::FailedPrecondition => {
                    tracing::warn!(tenant = tid, appid = %a.authorizer_appid, error = %e, "code not exchangeable; reconciling");
                    match engine.reconcile(tid, deadline).await {
                        Ok(_) => match engine.authorizers().get(tid, &a.authorizer_appid).await {
                            Ok(Some(r)) if r.status == AuthorizerStatus::Authorized => Ok(()),
                            Ok(_) => {
                                return Outcome::DeadLetter(format!(
                                    "authorizer {} could not be stored: {e}",
                                    a.authorizer_appid
                                ));
                            }
                            Err(e) => Err(e.into()),
                        },
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            }
        }
        ComponentNotice::Unauthorized {
            authorizer_appid,
            create_time,
            ..
        } => {
            let result = engine
                .authorizers()
                .revoke(
                    tid,
                    authorizer_appid,
                    create_time.saturating_mul(1000),
                    now,
                    "unauthorized",
                )
                .await;
            engine.forget_authorizer(tid, authorizer_appid);
            match result {
                Ok(changed) => {
                    tracing::info!(tenant = tid, appid = %authorizer_appid, changed, "authorizer revoked");
                    Ok(())
                }
                Err(e) => Err(e.into()),
            }
        }
        other => {
            tracing::info!(
                tenant = tid,
                info_type = other.info_type(),
                "notice not for token-control; acknowledged"
            );
            Ok(())
        }
    };
    if let Err(e) = applied {
        return retry_or_dead(&e, notice.info_type());
    }
    if let Err(e) = creds.mark_consumed(tid, &message_id, CONSUMED_TTL).await {
        // Applied but not marked: a redelivery applies it again, which is harmless.
        tracing::warn!(tenant = tid, error = %e, "cannot mark the event applied");
    }
    Outcome::Ack
}

async fn store_ticket(
    engine: &Arc<Engine>,
    tenant: &str,
    ticket: &str,
    create_time: i64,
    now: i64,
) -> Result<(), Error> {
    let creds = engine.credentials();
    let stored = creds.store_ticket(tenant, ticket, create_time, now).await?;
    metrics::counter!("wxhub_tickets_received_total", "tenant" => tenant.to_owned()).increment(1);
    if stored {
        engine.hold_ticket(
            tenant,
            &TicketRecord {
                value: Secret::new(ticket),
                create_time,
                received_at_ms: now,
            },
        );
        metrics::gauge!("wxhub_ticket_age_seconds", "tenant" => tenant.to_owned()).set(0.0);
        // A component token that could not be fetched for lack of a ticket is fetched now.
        let name = Credential::Component.name();
        if creds.token(tenant, &name).await?.is_none() {
            creds.schedule(tenant, &name, now, false).await?;
        }
    }
    Ok(())
}
