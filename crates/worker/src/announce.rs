//! Announcements: how a stored job gets onto the broker.
//!
//! **A job is reported announced only once the broker has confirmed a message that names
//! it.** Enqueue answers, and the feeder marks a held job or a campaign slice fed, only after
//! that confirm; a publish that fails leaves the job to its caller (Enqueue removes it, the
//! feeder tries again next tick).
//!
//! **Many jobs share one message.** A job's own record (body, state, attempts) is in Redis;
//! the broker carries only its name and route, and its cost is per message: a quorum queue
//! appends, replicates, confirms, delivers and settles each one. A message per job was the
//! largest single part of a job's cost (docs/messaging.md#measured), so jobs go out as a
//! [`SendBatch`] of up to `worker.announce_batch` (64; 1 announces every job alone):
//! - concurrent Enqueue calls are group-committed by the [`Announcer`]: while
//!   [`IN_FLIGHT`] messages await their confirms, the calls that arrive gather, and go out
//!   together as the next message. Nothing waits to fill a batch: a call that finds a free
//!   slot goes out at once, alone, so an idle service adds no latency and a busy one sends
//!   fewer, fuller messages;
//! - the feeder publishes a held slice or a campaign slice in messages of that size.
//!
//! A message of one job is a plain [`SendJob`]; the sender handles both
//! (`crate::delivery`), each job of a batch claimed, sent and settled on its own.

use std::sync::Arc;

use prost::Message as _;
use tokio::sync::{Semaphore, mpsc, oneshot};
use wxhub_bus::topology::SEND_KEY;
use wxhub_bus::{Bus, BusError, Outgoing};
use wxhub_proto::jobs::v1::{SendBatch, SendJob, SendRoute};
use wxhub_store::NewJob;

/// AMQP `type` of a [`SendJob`] message.
pub const SEND_JOB_TYPE: &str = "wxhub.jobs.v1.SendJob";

/// AMQP `type` of a [`SendBatch`] message.
pub const SEND_BATCH_TYPE: &str = "wxhub.jobs.v1.SendBatch";

/// Most jobs in one message whatever the config says: a message the size of a campaign's
/// tick, far below the broker's frame and message limits (about 100 B a job).
pub const BATCH_MAX: usize = 1000;

/// Enqueue's messages awaiting their confirm at once. One would batch the most but leave every
/// caller behind one slow confirm; two keep the broker busy while the next batch gathers.
pub const IN_FLIGHT: usize = 2;

/// The announcement of job `id` of `tenant`, carrying the current trace context.
pub fn send_job(tenant: &str, id: &str, route: Option<SendRoute>) -> SendJob {
    SendJob {
        tenant: tenant.to_owned(),
        job_id: id.to_owned(),
        route,
        trace: wxhub_runtime::trace::inject_current(),
    }
}

/// The route of a job about to be stored, for its announcement (see `SendJob.route`).
pub fn new_route(job: &NewJob) -> SendRoute {
    SendRoute {
        appid: job.appid.clone(),
        kind: job.kind.clone(),
        api: job.api.clone(),
        touser: job.touser.clone(),
        campaign: job.campaign.clone().unwrap_or_default(),
    }
}

/// Publishes `jobs` (not empty) as one message with `routing_key`
/// (`send` or `send-bulk`) and waits for the broker's confirm: a [`SendJob`] when there is one,
/// else a [`SendBatch`].
pub async fn publish(bus: &Bus, routing_key: &str, jobs: &[SendJob]) -> Result<(), BusError> {
    let Some(first) = jobs.first() else {
        return Ok(());
    };
    // A job alone carries its trace in the message's headers too, so the consumer's span of
    // the delivery continues it; a batch's jobs each carry their own.
    let mut headers = Vec::new();
    let (body, message_type) = if let [one] = jobs {
        headers.extend(one.trace.iter().map(|(k, v)| (k.clone(), v.clone())));
        (one.encode_to_vec(), SEND_JOB_TYPE)
    } else {
        let batch = SendBatch {
            jobs: jobs.to_vec(),
        };
        (batch.encode_to_vec(), SEND_BATCH_TYPE)
    };
    let exchange = bus.topology().jobs_exchange();
    bus.publish(&Outgoing {
        exchange: &exchange,
        routing_key,
        body: &body,
        message_id: &first.job_id,
        message_type,
        headers: &headers,
    })
    .await
}

/// Publishes one job's announcement (`send`) on its own, with confirm: a replay, a job found
/// queued and unannounced.
pub async fn publish_job(
    bus: &Bus,
    tenant: &str,
    id: &str,
    route: Option<SendRoute>,
) -> Result<(), BusError> {
    publish(bus, SEND_KEY, &[send_job(tenant, id, route)]).await
}

/// Publishes `jobs` in messages of `batch`, `concurrency` at once, and returns each message's
/// jobs with its result (the feeder's slices).
pub async fn publish_all(
    bus: &Bus,
    routing_key: &str,
    jobs: Vec<SendJob>,
    batch: usize,
    concurrency: usize,
) -> Vec<(Vec<SendJob>, Result<(), BusError>)> {
    use futures::StreamExt as _;
    let batch = batch.clamp(1, BATCH_MAX);
    let mut chunks = Vec::new();
    let mut jobs = jobs.into_iter().peekable();
    while jobs.peek().is_some() {
        chunks.push(jobs.by_ref().take(batch).collect::<Vec<_>>());
    }
    futures::stream::iter(chunks)
        .map(|chunk| async move {
            let r = publish(bus, routing_key, &chunk).await;
            (chunk, r)
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await
}

fn stopped() -> BusError {
    BusError::Unavailable("the announcer stopped".into())
}

/// A job waiting for its message's confirm.
struct Waiting {
    job: SendJob,
    done: oneshot::Sender<Result<(), BusError>>,
}

/// Group commit of Enqueue's announcements on `send` (see the module's documentation). Cheap
/// to clone; its task ends when the last clone is dropped.
#[derive(Clone)]
pub struct Announcer {
    tx: mpsc::UnboundedSender<Waiting>,
    bus: Bus,
}

impl std::fmt::Debug for Announcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Announcer").finish_non_exhaustive()
    }
}

impl Announcer {
    /// Starts the announcer's task on the current runtime: messages of up to `batch` jobs.
    /// With `batch` 1 nothing is gathered: every job is published at once, alone, as many at a
    /// time as the publisher has channels.
    pub fn start(bus: Bus, batch: usize) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let batch = batch.clamp(1, BATCH_MAX);
        let slots = if batch == 1 {
            bus.config().publisher_channels
        } else {
            IN_FLIGHT
        };
        tokio::spawn(run(bus.clone(), batch, slots, rx));
        Self { tx, bus }
    }

    /// The bus it publishes on (for a job announced alone: [`publish_job`]).
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Announces `job` and returns once the message carrying it is confirmed (or refused). The
    /// queue in front is bounded by Enqueue's callers, each of whom waits here.
    pub async fn announce(&self, job: SendJob) -> Result<(), BusError> {
        let mut results = self.announce_all(vec![job]).await;
        results.pop().unwrap_or_else(|| Err(stopped()))
    }

    /// Announces `jobs` (an EnqueueBatch) and returns, once every message carrying one is
    /// confirmed or refused, each job's result in order. They join the group commit together,
    /// so they share messages with each other and with concurrent calls.
    pub async fn announce_all(&self, jobs: Vec<SendJob>) -> Vec<Result<(), BusError>> {
        let confirms: Vec<_> = jobs
            .into_iter()
            .map(|job| {
                let (done, confirmed) = oneshot::channel();
                self.tx.send(Waiting { job, done }).ok().map(|()| confirmed)
            })
            .collect();
        let mut results = Vec::with_capacity(confirms.len());
        for confirmed in confirms {
            results.push(match confirmed {
                Some(confirmed) => confirmed.await.unwrap_or_else(|_| Err(stopped())),
                None => Err(stopped()),
            });
        }
        results
    }
}

async fn run(bus: Bus, batch_max: usize, slots: usize, mut rx: mpsc::UnboundedReceiver<Waiting>) {
    let slots = Arc::new(Semaphore::new(slots.max(1)));
    while let Some(first) = rx.recv().await {
        // Wait for a free slot before gathering: the calls that arrive meanwhile join this
        // message.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < batch_max {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let bus = bus.clone();
        tokio::spawn(async move {
            let (jobs, waiting): (Vec<SendJob>, Vec<_>) =
                batch.into_iter().map(|w| (w.job, w.done)).unzip();
            metrics::histogram!("wxhub_worker_announce_batch_jobs").record(jobs.len() as f64);
            let result = publish(&bus, SEND_KEY, &jobs).await;
            drop(slot);
            for done in waiting {
                // A caller that gave up (its deadline) no longer listens.
                let _ = done.send(result.clone());
            }
        });
    }
}
