//! Driving the messaging service from a benchmark: many enqueues at once, and when a job was
//! sent according to its record.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use wxhub_proto::messaging::v1 as pb;
use wxhub_proto::messaging::v1::messaging_client::MessagingClient;

use crate::{OPS_KEY, req};

/// Enqueues `make(0)`…`make(jobs − 1)` over `concurrency` callers of `client`, each call
/// answered (stored, its publish confirmed) before that caller's next: one message an Enqueue
/// call when `batch` is 0, else `batch` an EnqueueBatch call (of the first message's tenant),
/// every message accepted.
pub async fn enqueue_all<F>(
    client: &MessagingClient<Channel>,
    jobs: u64,
    (concurrency, batch): (u64, u64),
    make: F,
) where
    F: Fn(u64) -> pb::EnqueueRequest + Send + Sync + 'static,
{
    let (next, make) = (Arc::new(AtomicU64::new(0)), Arc::new(make));
    let step = batch.max(1);
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (mut client, next, make) = (client.clone(), next.clone(), make.clone());
            tokio::spawn(async move {
                loop {
                    let first = next.fetch_add(step, Ordering::Relaxed);
                    if first >= jobs {
                        break;
                    }
                    if batch == 0 {
                        client
                            .enqueue(req(make(first), OPS_KEY))
                            .await
                            .expect("enqueue");
                        continue;
                    }
                    let messages: Vec<_> =
                        (first..jobs.min(first + batch)).map(|i| make(i)).collect();
                    let tenant = messages[0].tenant.clone();
                    let results = client
                        .enqueue_batch(req(pb::EnqueueBatchRequest { tenant, messages }, OPS_KEY))
                        .await
                        .expect("enqueue batch")
                        .into_inner()
                        .results;
                    for r in results {
                        assert_eq!(r.code, 0, "a message refused: {}", r.error);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("enqueuer");
    }
}

/// How long after its creation job `id` was sent (its last attempt, from the record), polling
/// until it is; panics if it is not within `limit`.
pub async fn sent_after(
    client: &mut MessagingClient<Channel>,
    id: &str,
    limit: Duration,
) -> Duration {
    let deadline = Instant::now() + limit;
    loop {
        let j = client
            .get_job(req(
                pb::GetJobRequest {
                    job_id: id.to_owned(),
                },
                OPS_KEY,
            ))
            .await
            .expect("job")
            .into_inner();
        if matches!(
            j.state_name.as_str(),
            "sent" | "delivered" | "delivery_failed"
        ) {
            let sent_at = j.attempts.last().map_or(j.updated_at_ms, |a| a.at_ms);
            return Duration::from_millis(u64::try_from(sent_at - j.created_at_ms).unwrap_or(0));
        }
        assert!(Instant::now() < deadline, "job not sent: {j:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
