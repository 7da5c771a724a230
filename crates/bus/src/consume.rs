use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{Bus, Outgoing};

/// A delivered message, decoupled from lapin.
#[derive(Debug, Clone)]
pub struct Received {
    pub routing_key: String,
    pub message_id: Option<String>,
    pub message_type: Option<String>,
    /// String-valued headers (`traceparent`, ...).
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// The broker delivered it before (a hint only).
    pub redelivered: bool,
    /// Quorum queues' `x-delivery-count`: earlier failed deliveries.
    pub delivery_count: u64,
}

/// What the handler decided. The consumer acks only after the handler returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done (or a duplicate): remove it.
    Ack,
    /// Transient failure: put it back after a pause (counts toward the delivery limit, after
    /// which the broker dead-letters it). The pause is 200 ms, and grows while all of a
    /// consumer's deliveries fail (up to 30 s), so that the limit spans an outage.
    Requeue,
    /// Permanent failure: publish it to `{ns}.dead` with the reason in `x-wxhub-reason`, then
    /// ack. Never silently dropped.
    DeadLetter(String),
}

impl Outcome {
    /// Its metrics label: `ack`, `requeue` or `dead_letter`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Ack => "ack",
            Outcome::Requeue => "requeue",
            Outcome::DeadLetter(_) => "dead_letter",
        }
    }
}

/// The first pause before a requeue: a failing dependency is not hammered in a tight loop.
const REQUEUE_PAUSE: Duration = Duration::from_millis(200);

/// The longest pause before a requeue.
const REQUEUE_PAUSE_MAX: Duration = Duration::from_secs(30);

/// The pause before requeueing, after `streak` requeues in a row of a consumer (no ack or
/// dead letter between them) with `in_flight` deliveries being handled: 200 ms, doubled for
/// each round of `in_flight` failures, at most 30 s.
///
/// Why it grows: a requeue counts toward the queue's delivery limit (20 by default). At a
/// fixed 200 ms a dependency down for four seconds (a Redis failover) would have the broker
/// dead-letter every message in flight, each still unhandled. When every delivery fails, the
/// limit now spans minutes (about seven at 20), however many are in flight. A poison message
/// among healthy ones still goes within seconds: the others' acks keep the streak short.
fn requeue_pause(streak: u32, in_flight: usize) -> Duration {
    let rounds = streak / u32::try_from(in_flight.max(1)).unwrap_or(u32::MAX);
    REQUEUE_PAUSE
        .saturating_mul(1 << rounds.min(8))
        .min(REQUEUE_PAUSE_MAX)
}

/// A consumer's requeues in a row (across its handlers) and the pause they call for.
struct Backoff {
    streak: AtomicU32,
    /// Signalled when a delivery succeeds again: requeues pausing past the first
    /// [`REQUEUE_PAUSE`] go back at once (the dependency is back; their pause no longer helps).
    recovered: Notify,
    /// The consumer's handler permits: those taken are the deliveries in flight.
    permits: Arc<Semaphore>,
    concurrency: usize,
}

impl Backoff {
    /// Counts `outcome` (a requeue extends the streak, anything else ends it) and returns the
    /// pause before settling it: [`requeue_pause`] for a requeue, none otherwise.
    fn after(&self, outcome: &Outcome) -> Duration {
        if *outcome != Outcome::Requeue {
            if self.streak.swap(0, Ordering::Relaxed) > 0 {
                self.recovered.notify_waiters();
            }
            return Duration::ZERO;
        }
        // The caller's handler holds a permit: at least one is in flight.
        let in_flight = self
            .concurrency
            .saturating_sub(self.permits.available_permits());
        requeue_pause(self.streak.fetch_add(1, Ordering::Relaxed), in_flight)
    }

    /// Waits `pause`: at least [`REQUEUE_PAUSE`] (or all of it, if shorter), then until the
    /// rest has passed or a delivery of the consumer succeeded.
    async fn wait(&self, pause: Duration) {
        // Listening from now: a success during the first pause ends the rest.
        let recovered = self.recovered.notified();
        tokio::pin!(recovered);
        recovered.as_mut().enable();
        let floor = pause.min(REQUEUE_PAUSE);
        tokio::time::sleep(floor).await;
        tokio::select! {
            () = tokio::time::sleep(pause - floor) => {}
            () = recovered => {}
        }
    }
}

/// Publishes a copy of `received` (taken from `queue`) to `{ns}.dead` with `reason` in
/// `x-wxhub-reason` (and its queue and routing key), confirmed: what [`Outcome::DeadLetter`]
/// does before the ack, and what a handler does for one part of a message it acks.
pub async fn dead_letter(
    bus: &Bus,
    queue: &str,
    received: &Received,
    reason: &str,
) -> Result<(), crate::BusError> {
    let mut headers: Vec<(String, String)> = received
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    headers.push(("x-wxhub-reason".into(), reason.to_owned()));
    headers.push(("x-wxhub-queue".into(), queue.to_owned()));
    headers.push(("x-wxhub-routing-key".into(), received.routing_key.clone()));
    let dead = bus.topology().dead_exchange();
    let message_id = received.message_id.as_deref().unwrap_or_default();
    bus.publish(&Outgoing {
        exchange: &dead,
        routing_key: &received.routing_key,
        body: &received.body,
        message_id,
        message_type: received.message_type.as_deref().unwrap_or(""),
        headers: &headers,
    })
    .await?;
    tracing::warn!(queue, message_id, reason, "dead-lettered");
    Ok(())
}

/// Consumes `queue` until `cancel`, running up to `concurrency` handlers at once, re-subscribing
/// after every reconnect. On cancel it stops taking deliveries and waits (at most `grace`) for
/// in-flight handlers, whose outcomes are still acked.
pub async fn consume<F, Fut>(
    bus: Bus,
    queue: String,
    concurrency: usize,
    grace: Duration,
    handler: F,
    cancel: CancellationToken,
) where
    F: Fn(Received) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let handler = Arc::new(handler);
    let concurrency = concurrency.max(1);
    let permits = Arc::new(Semaphore::new(concurrency));
    let backoff = Arc::new(Backoff {
        streak: AtomicU32::new(0),
        recovered: Notify::new(),
        permits: permits.clone(),
        concurrency,
    });
    let tag = format!(
        "{queue}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    let mut connected = bus.watch_connected();
    // The channel of the current subscription outlives the loop: the acks of handlers still
    // in flight when consuming stops go out on it (a dropped channel is closed, and their
    // messages would be redelivered although they were handled).
    let mut subscribed_on: Option<lapin::Channel> = None;
    'outer: loop {
        tokio::select! {
            () = cancel.cancelled() => break 'outer,
            r = connected.wait_for(|c| *c) => if r.is_err() { break 'outer },
        }
        let channel = match bus.channel().await {
            Ok(ch) => ch,
            Err(e) => {
                tracing::warn!(error = %e, queue, "cannot open a consumer channel");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let prefetch = bus.config().prefetch;
        let subscribed = async {
            channel
                .basic_qos(prefetch, BasicQosOptions::default())
                .await?;
            channel
                .basic_consume(
                    queue.as_str().into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
        }
        .await;
        let mut consumer = match subscribed {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, queue, "cannot subscribe; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        tracing::info!(queue, prefetch, "consuming");
        let channel = subscribed_on.insert(channel);
        loop {
            tokio::select! {
                () = cancel.cancelled() => {
                    let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                    break 'outer;
                }
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let Ok(permit) = permits.clone().acquire_owned().await else { break 'outer };
                        let handler = handler.clone();
                        let bus = bus.clone();
                        let queue = queue.clone();
                        let backoff = backoff.clone();
                        tokio::spawn(async move {
                            handle(&bus, &queue, delivery, handler.as_ref(), &backoff).await;
                            drop(permit);
                        });
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, queue, "consumer stream failed; re-subscribing");
                        break;
                    }
                    None => {
                        tracing::warn!(queue, "consumer stream ended; re-subscribing");
                        break;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Wait for in-flight handlers (bounded), their channel still open for their acks.
    let all = u32::try_from(concurrency).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(grace, permits.acquire_many(all)).await;
    drop(subscribed_on);
}

/// Runs `handler` on `delivery` and settles it as the handler decided, a requeue after the
/// pause `backoff` calls for.
async fn handle<F, Fut>(bus: &Bus, queue: &str, delivery: Delivery, handler: &F, backoff: &Backoff)
where
    F: Fn(Received) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let received = to_received(&delivery);
    // One span per delivery, a child of the publisher's (its `traceparent` header): a callback
    // or a job stays one trace across the broker.
    let span = tracing::info_span!(
        "consume",
        queue,
        routing_key = received.routing_key.as_str(),
        message_id = received.message_id.as_deref().unwrap_or(""),
    );
    wxhub_domain::trace::set_parent_from(&span, &received.headers);
    let outcome = handler(received).instrument(span).await;
    let requeue = BasicNackOptions {
        requeue: true,
        ..Default::default()
    };
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    let pause = backoff.after(&outcome);
    let result = match &outcome {
        Outcome::Ack => delivery.acker.ack(BasicAckOptions::default()).await,
        Outcome::Requeue => {
            backoff.wait(pause).await;
            delivery.acker.nack(requeue).await
        }
        Outcome::DeadLetter(reason) => {
            // Rare: rebuild the view of the delivery rather than keep a copy of every body.
            let received = to_received(&delivery);
            match dead_letter(bus, queue, &received, reason).await {
                Ok(()) => delivery.acker.ack(BasicAckOptions::default()).await,
                Err(e) => {
                    tracing::warn!(queue, message_id, error = %e, "cannot dead-letter; requeueing");
                    delivery.acker.nack(requeue).await
                }
            }
        }
    };
    let label = outcome.label();
    metrics::counter!("wxhub_bus_consumed_total", "outcome" => label).increment(1);
    match result {
        Ok(true) => {}
        // The channel died after delivery: the broker redelivers; handlers are idempotent.
        Ok(false) | Err(_) => {
            tracing::info!(
                queue,
                message_id,
                "ack not sent (channel gone); the message will be redelivered"
            );
        }
    }
}

fn to_received(d: &Delivery) -> Received {
    let mut headers = HashMap::new();
    let mut delivery_count = 0;
    if let Some(table) = d.properties.headers() {
        for (k, v) in table.inner() {
            match v {
                AMQPValue::LongString(s) => {
                    headers.insert(
                        k.to_string(),
                        String::from_utf8_lossy(s.as_bytes()).into_owned(),
                    );
                }
                AMQPValue::ShortString(s) => {
                    headers.insert(k.to_string(), s.to_string());
                }
                AMQPValue::LongLongInt(n) if k.as_str() == "x-delivery-count" => {
                    delivery_count = u64::try_from(*n).unwrap_or(0);
                }
                AMQPValue::LongInt(n) if k.as_str() == "x-delivery-count" => {
                    delivery_count = u64::try_from(*n).unwrap_or(0);
                }
                _ => {}
            }
        }
    }
    Received {
        routing_key: d.routing_key.to_string(),
        message_id: d.properties.message_id().as_ref().map(ToString::to_string),
        message_type: d.properties.kind().as_ref().map(ToString::to_string),
        headers,
        body: d.data.clone(),
        redelivered: d.redelivered,
        delivery_count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_requeue_pause_doubles_per_round_of_failures_up_to_thirty_seconds() {
        let ms = |streak, in_flight| requeue_pause(streak, in_flight).as_millis();
        assert_eq!(ms(0, 1), 200);
        assert_eq!(ms(1, 1), 400, "one in flight: each failure is a round");
        assert_eq!(ms(3, 1), 1600);
        assert_eq!(ms(31, 32), 200, "the first round of 32 in flight");
        assert_eq!(ms(32, 32), 400);
        assert_eq!(ms(8, 1), 30_000);
        assert_eq!(ms(u32::MAX, 1), 30_000);
        assert_eq!(ms(5, 0), 6_400, "none in flight counts as one");
    }

    /// After a run of failures a requeue pauses 30 s; a success of the consumer ends the
    /// pause of those waiting (the dependency is back), after the first 200 ms.
    #[tokio::test]
    async fn a_success_ends_the_long_pauses_of_the_requeues_waiting() {
        let backoff = Arc::new(Backoff {
            streak: AtomicU32::new(0),
            recovered: Notify::new(),
            permits: Arc::new(Semaphore::new(1)),
            concurrency: 1,
        });
        for _ in 0..8 {
            backoff.after(&Outcome::Requeue);
        }
        let pause = backoff.after(&Outcome::Requeue);
        assert_eq!(pause, REQUEUE_PAUSE_MAX);
        let unrelieved = backoff.clone();
        assert!(
            tokio::time::timeout(Duration::from_secs(1), unrelieved.wait(pause))
                .await
                .is_err(),
            "without a success the pause lasts"
        );
        let waiting = tokio::spawn({
            let backoff = backoff.clone();
            async move { backoff.wait(pause).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(backoff.after(&Outcome::Ack), Duration::ZERO);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the success ended the pause")
            .unwrap();
        assert_eq!(
            backoff.after(&Outcome::Requeue),
            REQUEUE_PAUSE,
            "the streak starts again"
        );
    }
}
