//! Consumer of `{ns}.token-control`: component notices published by the gateway.
//!
//! This module decodes a delivery (the `CallbackEvent`, its tenant, the notice) and hands the
//! notice to the engine ([`Engine::apply_notice`]: tickets stored, authorizations exchanged,
//! revocations applied, each message once); it only decides what the broker does with the
//! delivery. A message is acked once applied (or found applied before, or dated in the future
//! beyond the allowed skew); Redis or WeChat being down requeues it; a malformed message, or
//! one that can never apply, is dead-lettered with the reason.
//!
//! An authorization that cannot be exchanged because there is no usable ticket yet is not a bad
//! code: the engine waits for a ticket (up to `request_timeout_ms`), else it is requeued, and
//! only on the queue's last delivery dead-lettered with that reason.

use std::sync::Arc;

use prost::Message as _;
use wxhub_bus::{Outcome, Received};
use wxhub_message::parse_notice;
use wxhub_proto::events::v1::CallbackEvent;
use wxhub_runtime::{ErrorCode, TenantKind};

use crate::engine::Engine;
use crate::error::Error;

/// Handles one delivery of a queue that dead-letters after `delivery_limit` deliveries.
pub async fn handle(engine: Arc<Engine>, msg: Received, delivery_limit: u32) -> Outcome {
    let outcome = handle_inner(&engine, &msg, delivery_limit).await;
    let label = outcome.label();
    metrics::counter!("wxhub_token_events_total", "outcome" => label).increment(1);
    outcome
}

fn retry_or_dead(e: &Error, what: &str) -> Outcome {
    let code = e.code();
    if code.is_retryable() || code == ErrorCode::DeadlineExceeded {
        tracing::warn!(error = %e, what, "transient failure; requeueing");
        Outcome::Requeue
    } else {
        Outcome::DeadLetter(format!("{what}: {e}"))
    }
}

async fn handle_inner(engine: &Engine, msg: &Received, delivery_limit: u32) -> Outcome {
    let event = match CallbackEvent::decode(msg.body.as_slice()) {
        Ok(e) => e,
        Err(e) => return Outcome::DeadLetter(format!("not a CallbackEvent: {e}")),
    };
    let Some(tenant) = engine.tenants().current().get(&event.tenant).cloned() else {
        return Outcome::DeadLetter(format!("unknown tenant {:?}", event.tenant));
    };
    if tenant.kind != TenantKind::Component {
        return Outcome::DeadLetter(format!("tenant {:?} is not a component", event.tenant));
    }
    let notice = match parse_notice(&event.xml) {
        Ok(n) => n,
        Err(e) => return Outcome::DeadLetter(format!("unparsable notice: {e}")),
    };
    if notice.app_id() != tenant.app_id {
        return Outcome::DeadLetter(format!(
            "notice for component {:?}, tenant {:?} is {:?}",
            notice.app_id(),
            event.tenant,
            tenant.app_id
        ));
    }
    let message_id = msg
        .message_id
        .clone()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| notice.dedupe_key());
    match engine.apply_notice(&tenant, &message_id, &notice).await {
        Ok(_) => Outcome::Ack,
        // No ticket yet (WeChat was asked for one): the code is fine, try again later.
        Err(e) if e.no_ticket() => {
            let delivery = msg.delivery_count + 1;
            if delivery < u64::from(delivery_limit) {
                tracing::warn!(tenant = %tenant.id, appid = notice.authorizer_appid(), delivery, "no component_verify_ticket yet; requeueing the authorization");
                Outcome::Requeue
            } else {
                Outcome::DeadLetter(format!(
                    "{}: no usable component_verify_ticket in {delivery_limit} deliveries: {e}",
                    notice.info_type()
                ))
            }
        }
        Err(e @ Error::NotStored { .. }) => Outcome::DeadLetter(e.to_string()),
        Err(e) => retry_or_dead(&e, notice.info_type()),
    }
}
