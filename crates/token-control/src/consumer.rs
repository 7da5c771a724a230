//! Consumer of `{ns}.token-control`: component notices published by the gateway.
//!
//! This module decodes a delivery (the `CallbackEvent`, its tenant, the notice) and hands the
//! notice to the engine ([`Engine::apply_notice`]: tickets stored, authorizations exchanged,
//! revocations applied, each message once); it only decides what the broker does with the
//! delivery. A message is acked once applied (or found applied before, or dated in the future
//! beyond the allowed skew); a malformed message, or one that can never apply, is
//! dead-lettered with the reason.
//!
//! **Redis or WeChat not answering loses no notice.** A notice that fails for a passing reason
//! waits in a delay queue of `{ns}.token-control` ([`Later`], `wxhub_bus::delay`:
//! `token_control.retry_delays_ms` in turn, the last repeating, `x-wxhub-failures` counting) and
//! its delivery is acked; only once the notice is an hour old (an authorization code lives an
//! hour) is it dead-lettered with the reason. Requeued instead (before), it counted toward the
//! queue's delivery limit, and an outage longer than the limit spans (about 7 minutes at 20)
//! had the broker dead-letter every notice that arrived meanwhile.
//!
//! An authorization that cannot be exchanged because there is no usable ticket yet is not a bad
//! code: the engine waits for a ticket (up to `request_timeout_ms`), else it is requeued, and
//! only on the queue's last delivery dead-lettered with that reason.

use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use wxhub_bus::{Bus, Outcome, Received, delay};
use wxhub_message::parse_notice;
use wxhub_proto::events::v1::CallbackEvent;
use wxhub_runtime::{ErrorCode, TenantKind};

use crate::engine::Engine;
use crate::error::Error;

/// Header carrying how many deliveries of a notice in a row failed for a passing reason.
pub const FAILURES_HEADER: &str = "x-wxhub-failures";

/// How long a notice may keep failing for passing reasons before it is dead-lettered: the life
/// of an authorization code.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(3600);

/// A delivery that failed for a passing reason (Redis or WeChat not answering).
#[derive(Debug)]
pub struct Transient {
    what: String,
    error: String,
    /// When the gateway received the notice (0: unknown).
    received_at_ms: i64,
}

/// Puts off notices that failed for a passing reason: the delay queues of `queue`, declared
/// when the first notice is put off.
#[derive(Debug, Clone)]
pub struct Later {
    bus: Bus,
    queue: String,
    /// `token_control.retry_delays_ms`, in order.
    delays: Vec<u32>,
    /// The delay queues' tiers: the delays, sorted, once each.
    tiers: Vec<u32>,
}

impl Later {
    pub fn new(bus: Bus, queue: String, delays: Vec<u32>) -> Self {
        let mut tiers = delays.clone();
        tiers.sort_unstable();
        tiers.dedup();
        Self {
            bus,
            queue,
            delays,
            tiers,
        }
    }

    /// `msg` waits in a delay queue (its delivery then acked), or is dead-lettered once it is
    /// [`GIVE_UP_AFTER`] old; requeued only if the broker refuses the delay queue's publish.
    async fn put_off(
        &self,
        msg: &Received,
        failed: Transient,
        now_ms: i64,
    ) -> (Outcome, &'static str) {
        let Transient {
            what,
            error,
            received_at_ms,
        } = failed;
        let age = now_ms.saturating_sub(received_at_ms);
        if received_at_ms > 0 && u128::from(age.unsigned_abs()) >= GIVE_UP_AFTER.as_millis() {
            return (
                Outcome::DeadLetter(format!("{what}: failing for an hour: {error}")),
                "dead_letter",
            );
        }
        let before = delay::failures(msg, FAILURES_HEADER);
        let wait = delay::nth(&self.delays, before);
        tracing::warn!(
            what,
            error,
            failures = before + 1,
            "transient failure; the notice waits {wait:?} in a delay queue"
        );
        match delay::put_off(
            &self.bus,
            &self.queue,
            &self.tiers,
            msg,
            FAILURES_HEADER,
            wait,
            true,
        )
        .await
        {
            Outcome::Ack => (Outcome::Ack, "deferred"),
            other => (other, "requeue"),
        }
    }
}

/// Handles one delivery of a queue that dead-letters after `delivery_limit` deliveries.
pub async fn handle(
    engine: Arc<Engine>,
    msg: Received,
    delivery_limit: u32,
    later: Arc<Later>,
) -> Outcome {
    let (outcome, label) = match handle_inner(&engine, &msg, delivery_limit).await {
        Ok(outcome) => {
            let label = outcome.label();
            (outcome, label)
        }
        Err(failed) => later.put_off(&msg, failed, engine.now_ms()).await,
    };
    metrics::counter!("wxhub_token_events_total", "outcome" => label).increment(1);
    outcome
}

fn transient_or_dead(e: &Error, what: &str, received_at_ms: i64) -> Result<Outcome, Transient> {
    let code = e.code();
    if code.is_retryable() || code == ErrorCode::DeadlineExceeded {
        Err(Transient {
            what: what.to_owned(),
            error: e.to_string(),
            received_at_ms,
        })
    } else {
        Ok(Outcome::DeadLetter(format!("{what}: {e}")))
    }
}

/// The delivery's outcome, or the passing failure it met ([`Later`] puts it off).
async fn handle_inner(
    engine: &Engine,
    msg: &Received,
    delivery_limit: u32,
) -> Result<Outcome, Transient> {
    let event = match CallbackEvent::decode(msg.body.as_slice()) {
        Ok(e) => e,
        Err(e) => return Ok(Outcome::DeadLetter(format!("not a CallbackEvent: {e}"))),
    };
    let Some(tenant) = engine.tenants().current().get(&event.tenant).cloned() else {
        return Ok(Outcome::DeadLetter(format!(
            "unknown tenant {:?}",
            event.tenant
        )));
    };
    if tenant.kind != TenantKind::Component {
        return Ok(Outcome::DeadLetter(format!(
            "tenant {:?} is not a component",
            event.tenant
        )));
    }
    let notice = match parse_notice(&event.xml) {
        Ok(n) => n,
        Err(e) => return Ok(Outcome::DeadLetter(format!("unparsable notice: {e}"))),
    };
    if notice.app_id() != tenant.app_id {
        return Ok(Outcome::DeadLetter(format!(
            "notice for component {:?}, tenant {:?} is {:?}",
            notice.app_id(),
            event.tenant,
            tenant.app_id
        )));
    }
    let message_id = msg
        .message_id
        .clone()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| notice.dedupe_key());
    match engine.apply_notice(&tenant, &message_id, &notice).await {
        Ok(_) => Ok(Outcome::Ack),
        // No ticket yet (WeChat was asked for one): the code is fine, try again later.
        Err(e) if e.no_ticket() => {
            let delivery = msg.delivery_count + 1;
            if delivery < u64::from(delivery_limit) {
                tracing::warn!(tenant = %tenant.id, appid = notice.authorizer_appid(), delivery, "no component_verify_ticket yet; requeueing the authorization");
                Ok(Outcome::Requeue)
            } else {
                Ok(Outcome::DeadLetter(format!(
                    "{}: no usable component_verify_ticket in {delivery_limit} deliveries: {e}",
                    notice.info_type()
                )))
            }
        }
        Err(e @ Error::NotStored { .. }) => Ok(Outcome::DeadLetter(e.to_string())),
        Err(e) => transient_or_dead(&e, notice.info_type(), event.received_at_ms),
    }
}
