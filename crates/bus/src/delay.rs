//! Delay queues: a message a consumer cannot handle now is published to wait, and comes back.
//!
//! **A message put off this way is never counted toward its queue's delivery limit.** A
//! consumed queue may have TTL queues `{queue}.retry.{ms}`, one per delay tier (the worker's
//! `worker.delay_tiers`, token-control's `token_control.retry_delays_ms`), that dead-letter back
//! into it ([`crate::Topology::declare_retry_tier`]); no delayed-message plugin. A handler
//! that publishes its message there (with the broker's confirm) acks the delivery, so a wait of
//! any length — a retry's backoff, a rate limit, a store that does not answer — costs the
//! message nothing. Requeueing instead would count each try, and after `amqp.delivery_limit`
//! of them the broker dead-letters the message, whatever it was waiting for.
//!
//! Used by the worker's sends (retries, deferrals, store failures) and delivery reports (store
//! failures), and by token-control's notices (transient failures).

use std::time::Duration;

use rand::RngExt as _;

use crate::{Bus, BusError, Outcome, Outgoing, Received};

/// Header carrying how many deliveries in a row could not use the store (a job's record, a
/// report's job).
pub const STORE_FAILURES_HEADER: &str = "x-wxhub-store-failures";

/// The longest wait of a message for its store to answer again (the first delay queue at
/// least as long).
pub const STORE_RETRY_MAX: Duration = Duration::from_secs(60);

/// The delay tiers of a queue whose messages wait only for their store: those of `tiers` up
/// to [`STORE_RETRY_MAX`] (that one alone when none is).
pub fn store_tiers(tiers: &[u32]) -> Vec<u32> {
    let most = u32::try_from(STORE_RETRY_MAX.as_millis()).unwrap_or(u32::MAX);
    let short: Vec<u32> = tiers.iter().copied().filter(|t| *t <= most).collect();
    if short.is_empty() { vec![most] } else { short }
}

/// Declares the delay queues of `queue` (idempotent).
pub async fn declare_tiers(bus: &Bus, queue: &str, tiers: &[u32]) -> Result<(), String> {
    let ch = bus.channel().await.map_err(|e| e.to_string())?;
    for tier in tiers {
        bus.topology()
            .declare_retry_tier(&ch, queue, *tier)
            .await
            .map_err(|e| e.to_string())?;
    }
    let _ = ch.close(200, "declared".into()).await;
    Ok(())
}

/// The wait after `failures` failures in a row before this one: `delays[failures]`, the last
/// one repeating ([`STORE_RETRY_MAX`] for none).
pub fn nth(delays: &[u32], failures: u32) -> Duration {
    let index = usize::try_from(failures).unwrap_or(usize::MAX);
    delays
        .get(index)
        .or(delays.last())
        .map_or(STORE_RETRY_MAX, |ms| Duration::from_millis(u64::from(*ms)))
}

/// How long a message waits after `failures` store failures in a row before this one: the
/// smallest delay tier first, then each next one, at most [`STORE_RETRY_MAX`].
pub fn store_retry(tiers: &[u32], failures: u32) -> Duration {
    nth(tiers, failures).min(STORE_RETRY_MAX)
}

/// Publishes `out` (its exchange and routing key are replaced) to the delay queue of `queue`
/// that fits `delay` — the smallest tier at least as long, else the longest — for `delay`
/// within that tier; `jitter`: a random wait in the tier's last fifth instead (retries of one
/// burst spread). A broker that lost the delay queues gets them declared again.
///
/// Returns the outcome of the delivery being put off: acked once the delay queue holds its
/// message, requeued (and logged) if the broker refused the publish.
pub async fn publish(
    bus: &Bus,
    queue: &str,
    tiers: &[u32],
    out: &Outgoing<'_>,
    delay: Duration,
    jitter: bool,
) -> Outcome {
    match publish_to_tier(bus, queue, tiers, out, delay, jitter).await {
        Ok(()) => Outcome::Ack,
        Err(e) => {
            tracing::warn!(queue, message_id = out.message_id, error = %e, "cannot publish to a delay queue; requeueing");
            Outcome::Requeue
        }
    }
}

async fn publish_to_tier(
    bus: &Bus,
    queue: &str,
    tiers: &[u32],
    out: &Outgoing<'_>,
    delay: Duration,
    jitter: bool,
) -> Result<(), BusError> {
    let wanted = u32::try_from(delay.as_millis()).unwrap_or(u32::MAX).max(1);
    let tier = tiers
        .iter()
        .copied()
        .find(|t| *t >= wanted)
        .or_else(|| tiers.last().copied())
        .unwrap_or(wanted);
    let floor = f64::from(tier) * 0.8;
    let ttl = if jitter {
        rand::rng().random_range(floor..=f64::from(tier))
    } else {
        f64::from(wanted).clamp(floor, f64::from(tier))
    };
    let ttl = Duration::from_millis(ttl as u64);
    let exchange = bus.topology().retry_exchange();
    let key = format!("{queue}.{tier}");
    let out = Outgoing {
        exchange: &exchange,
        routing_key: &key,
        ..*out
    };
    let result = bus.publish_expiring(&out, ttl).await;
    if !matches!(result, Err(BusError::Unroutable { .. })) {
        return result;
    }
    // Not declared yet (a service that declares them on first use) or lost by the broker.
    if let Err(e) = declare_tiers(bus, queue, tiers).await {
        tracing::warn!(error = e, queue, "cannot declare the delay queues");
    }
    bus.publish_expiring(&out, ttl).await
}

/// How many failures in a row `header` of `received` counts (0 without it).
pub fn failures(received: &Received, header: &str) -> u32 {
    received
        .headers
        .get(header)
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0)
}

/// Publishes `received` again — its body, id, type and headers (the trace context with them),
/// `header` counting one more failure — to the delay queue of `queue` that fits `wait`
/// ([`publish`], whose outcome it returns).
pub async fn put_off(
    bus: &Bus,
    queue: &str,
    tiers: &[u32],
    received: &Received,
    header: &str,
    wait: Duration,
    jitter: bool,
) -> Outcome {
    let mut headers: Vec<(String, String)> = received
        .headers
        .iter()
        .filter(|(k, _)| k.as_str() != header)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    headers.push((
        header.to_owned(),
        failures(received, header).saturating_add(1).to_string(),
    ));
    let out = Outgoing {
        exchange: "",
        routing_key: "",
        body: &received.body,
        message_id: received.message_id.as_deref().unwrap_or(""),
        message_type: received.message_type.as_deref().unwrap_or(""),
        headers: &headers,
    };
    publish(bus, queue, tiers, &out, wait, jitter).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_retries_grow_through_the_tiers_up_to_a_minute() {
        let tiers = [300, 1_000, 30_000, 120_000];
        let waits: Vec<_> = (0..6).map(|n| store_retry(&tiers, n)).collect();
        assert_eq!(
            waits,
            [300, 1_000, 30_000, 60_000, 60_000, 60_000].map(Duration::from_millis)
        );
        assert_eq!(store_retry(&[], 3), STORE_RETRY_MAX);
        assert_eq!(nth(&[5_000, 1_000], 0), Duration::from_secs(5));
        assert_eq!(nth(&[5_000, 1_000], 9), Duration::from_secs(1));
        assert_eq!(store_tiers(&tiers), [300, 1_000, 30_000]);
        assert_eq!(store_tiers(&[120_000]), [60_000]);
    }
}
