//! Dedupe and confirmed publishing: the part of the pipeline that decides whether a callback may
//! be acknowledged.
//!
//! The rule (design §4, invariants 1 and 2): a 2xx only after the broker confirmed the message,
//! and a retry is dropped only if an earlier delivery of the same key was confirmed.
//!
//! - Claim the dedupe key (`SET NX` of a pending marker owned by this request).
//!   `Fresh` → publish; `Done` → answer as processed; `InFlight` → another request is
//!   publishing it: poll until it is `Done` (answer), gone (claim it), or the deadline (503).
//! - The publish is polled inline; if the deadline passes first (or the client goes away and
//!   the handler is dropped) the pending publish moves into a task and still finishes: a late
//!   confirm marks the key done (the retry gets `success` without a second copy), a failure
//!   releases it (the retry publishes).
//! - Only a publish already sent finishes late. One still waiting for a publisher channel (all
//!   busy behind a stalled broker) at the deadline is abandoned unsent (`Bus::publish_by` with
//!   the deadline) and its claim released: otherwise each 503'd attempt of a callback would be
//!   queued behind the stall and published once the broker recovers — as many copies as WeChat
//!   made attempts — while WeChat's next retry publishes it anyway.
//! - The answer goes out as soon as the broker confirmed; marking the key done follows in a
//!   small background task (a retry arriving in between sees `InFlight` and waits for it).
//! - Redis down: `gateway.redis_down = "publish"` (default) publishes without a claim — nothing
//!   is lost, a retry may publish a duplicate with the same `message_id`; `"reject"` answers 503.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::timeout_at;
use wxhub_bus::{BusError, Outgoing};
use wxhub_store::dedupe::Claim;

use crate::config::RedisDown;
use crate::failure::Failure;
use crate::meter as m;
use crate::state::Shared;

/// A publish that has not happened yet gives up after this long even without a deadline (a
/// broker that accepts the connection but never confirms); its outcome is then unknown and the
/// pending marker simply expires.
const PUBLISH_CAP: Duration = Duration::from_secs(30);

/// The dedupe identity of a callback.
#[derive(Debug, Clone)]
pub(crate) struct DedupeKey {
    pub tenant: String,
    pub appid: String,
    /// The per-account part (`msg:{MsgId}`, `evt:...`, `info:...`), hashed when very long.
    pub key: String,
}

impl DedupeKey {
    /// AMQP `message_id` and `CallbackEvent.dedupe_key`: `{tenant}:{appid}:{key}`, at most 255
    /// bytes (an AMQP short string).
    pub(crate) fn new(tenant: &str, appid: &str, key: String) -> Self {
        let mut key = key;
        if tenant.len() + appid.len() + key.len() + 2 > 255 {
            key = format!("h:{}", sha1_hex(key.as_bytes()));
        }
        let mut appid = appid.to_owned();
        if tenant.len() + appid.len() + key.len() + 2 > 255 {
            appid = format!("h:{}", sha1_hex(appid.as_bytes()));
        }
        Self {
            tenant: tenant.to_owned(),
            appid,
            key,
        }
    }

    pub(crate) fn message_id(&self) -> String {
        let mut id =
            String::with_capacity(self.tenant.len() + self.appid.len() + self.key.len() + 2);
        id.push_str(&self.tenant);
        id.push(':');
        id.push_str(&self.appid);
        id.push(':');
        id.push_str(&self.key);
        id
    }
}

fn sha1_hex(bytes: &[u8]) -> String {
    use sha1::{Digest, Sha1};
    hex::encode(Sha1::digest(bytes))
}

/// What to publish.
#[derive(Debug)]
pub(crate) struct Publication {
    pub exchange: Arc<str>,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub message_id: String,
    pub message_type: &'static str,
    pub headers: Vec<(String, String)>,
    /// `event` or `job`, for metrics.
    pub what: &'static str,
}

/// How a delivery ended when it ended well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivered {
    /// The broker confirmed it now.
    Published,
    /// An earlier delivery of the same key was confirmed.
    Duplicate,
}

/// Claims, publishes and marks — or reports why the callback must not be acknowledged.
pub(crate) async fn deliver(
    shared: &Arc<Shared>,
    key: DedupeKey,
    publication: Publication,
    deadline: tokio::time::Instant,
) -> Result<Delivered, Failure> {
    let owner = format!("{:016x}", rand::random::<u64>());
    let mut poll = Duration::from_millis(10);
    let mut waited = false;
    loop {
        let budget = deadline.min(tokio::time::Instant::now() + shared.dedupe_timeout);
        let claim = timeout_at(
            budget,
            shared
                .dedupe
                .claim(&key.tenant, &key.appid, &key.key, &owner),
        )
        .await;
        match claim {
            Ok(Ok(Claim::Fresh)) => {
                m::dedupe(if waited { "fresh_after_wait" } else { "fresh" });
                return publish(shared, key, owner, publication, deadline).await;
            }
            Ok(Ok(Claim::Done)) => {
                m::dedupe(if waited { "done_after_wait" } else { "done" });
                return Ok(Delivered::Duplicate);
            }
            Ok(Ok(Claim::InFlight)) => {
                if !waited {
                    m::dedupe("in_flight");
                    waited = true;
                }
                let now = tokio::time::Instant::now();
                if now + poll >= deadline {
                    m::dedupe("wait_deadline");
                    return Err(Failure::unavailable(
                        "in_flight",
                        "an earlier delivery of this callback is still being published",
                    ));
                }
                tokio::time::sleep(poll).await;
                poll = (poll * 2).min(Duration::from_millis(100));
            }
            Ok(Err(e)) => {
                return redis_down(shared, key, owner, publication, deadline, &e.to_string()).await;
            }
            Err(_) => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(Failure::unavailable(
                        "deadline",
                        "deadline passed during the dedupe claim",
                    ));
                }
                return redis_down(
                    shared,
                    key,
                    owner,
                    publication,
                    deadline,
                    "dedupe claim timed out",
                )
                .await;
            }
        }
    }
}

async fn redis_down(
    shared: &Arc<Shared>,
    key: DedupeKey,
    owner: String,
    publication: Publication,
    deadline: tokio::time::Instant,
    error: &str,
) -> Result<Delivered, Failure> {
    match shared.redis_down {
        RedisDown::Publish => {
            m::dedupe("redis_down_publish");
            tracing::warn!(tenant = %key.tenant, error, "redis unavailable; publishing without dedupe");
            // The owner still goes along: if the claim did land, completing it marks it done.
            publish(shared, key, owner, publication, deadline).await
        }
        RedisDown::Reject => {
            m::dedupe("redis_down_reject");
            Err(Failure::unavailable(
                "redis",
                format!("dedupe unavailable: {error}"),
            ))
        }
    }
}

async fn publish(
    shared: &Arc<Shared>,
    key: DedupeKey,
    owner: String,
    publication: Publication,
    deadline: tokio::time::Instant,
) -> Result<Delivered, Failure> {
    let what = publication.what;
    let started = Instant::now();
    // The publish is polled inline (no task, no channel on the hot path); see `Pending`.
    let confirm = {
        let shared = shared.clone();
        async move {
            let outgoing = Outgoing {
                exchange: &publication.exchange,
                routing_key: &publication.routing_key,
                body: &publication.body,
                message_id: &publication.message_id,
                message_type: publication.message_type,
                headers: &publication.headers,
            };
            shared.bus.publish_by(&outgoing, deadline).await
        }
    };
    let mut pending = Pending {
        confirm: Some(Box::pin(confirm)),
        shared: shared.clone(),
        marker: Some((key, owner)),
        what,
        started,
    };
    let result = tokio::select! {
        biased;
        r = pending.confirm.as_mut().expect("set above") => r,
        // Dropping `pending` hands the publish to a task that settles the marker.
        () = tokio::time::sleep_until(deadline) => {
            return Err(Failure::unavailable(
                "deadline",
                "the broker did not confirm within the deadline",
            ));
        }
    };
    pending.confirm = None;
    let (key, owner) = pending.marker.take().expect("set above");
    m::publish_latency(what, started.elapsed());
    match result {
        Ok(()) => {
            // Confirmed: answer now; the completer marks the key done in the background (a
            // retry arriving meanwhile sees the pending marker and waits for it).
            settle(shared, &key, &owner, what, Some(Ok(()))).await;
            Ok(Delivered::Published)
        }
        Err(e) => {
            let reason = match &e {
                BusError::Unavailable(_) => "broker",
                BusError::Nacked => "nacked",
                BusError::Unroutable { .. } => "unroutable",
                BusError::Expired => "deadline",
            };
            let detail = e.to_string();
            // Release before answering, so WeChat's retry can publish.
            settle(shared, &key, &owner, what, Some(Err(e))).await;
            Err(Failure::unavailable(reason, detail))
        }
    }
}

/// A publish in flight. Dropped before it completed — at the deadline, or because the client
/// went away and hyper dropped the handler — it moves into a task that waits for the confirm
/// and settles the dedupe marker, so a late confirm still counts and a failure still releases.
/// A publish not yet sent by then ends at once in that task with `BusError::Expired` (its send
/// deadline is the request's), which releases the marker.
struct Pending<F>
where
    F: Future<Output = Result<(), BusError>> + Send + 'static,
{
    confirm: Option<Pin<Box<F>>>,
    shared: Arc<Shared>,
    marker: Option<(DedupeKey, String)>,
    what: &'static str,
    started: Instant,
}

impl<F> Drop for Pending<F>
where
    F: Future<Output = Result<(), BusError>> + Send + 'static,
{
    fn drop(&mut self) {
        if let (Some(confirm), Some((key, owner))) = (self.confirm.take(), self.marker.take())
            // No runtime (the process is exiting): the pending marker simply expires.
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let (shared, what, started) = (self.shared.clone(), self.what, self.started);
            self.shared.tasks.spawn_on(
                async move {
                    // `None`: no confirm within the cap; the outcome is unknown.
                    let result = tokio::time::timeout(PUBLISH_CAP, confirm).await.ok();
                    m::publish_latency(what, started.elapsed());
                    settle(&shared, &key, &owner, what, result).await;
                },
                &runtime,
            );
        }
    }
}

/// Records the outcome of a publish in the dedupe marker: done after a confirm, released after
/// a failure; a publish whose outcome is unknown (`None`) leaves the pending marker to expire.
async fn settle(
    shared: &Shared,
    key: &DedupeKey,
    owner: &str,
    what: &'static str,
    result: Option<Result<(), BusError>>,
) {
    let budget = shared.dedupe_timeout;
    match result {
        None => {}
        Some(Ok(())) => {
            m::published(&key.tenant, what);
            // Queued, not awaited: failures are counted by the completer
            // (`wxhub_dedupe_complete_failed_total`).
            shared
                .completer
                .complete(&key.tenant, &key.appid, &key.key, owner);
        }
        Some(Err(_)) => {
            let released = tokio::time::timeout(
                budget,
                shared
                    .dedupe
                    .release(&key.tenant, &key.appid, &key.key, owner),
            )
            .await;
            if !matches!(released, Ok(Ok(()))) {
                m::dedupe("release_failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_scoped_and_short() {
        let k = DedupeKey::new("acme", "wx1", "msg:42".into());
        assert_eq!(k.message_id(), "acme:wx1:msg:42");
        let long = DedupeKey::new("acme", "wx1", format!("evt:o:1:VIEW:{}", "x".repeat(400)));
        assert!(long.message_id().len() <= 255);
        assert!(long.key.starts_with("h:"));
        // Deterministic: a retry maps to the same key.
        let again = DedupeKey::new("acme", "wx1", format!("evt:o:1:VIEW:{}", "x".repeat(400)));
        assert_eq!(long.message_id(), again.message_id());
        let huge = DedupeKey::new("acme", &"a".repeat(300), "msg:1".into());
        assert!(huge.message_id().len() <= 255);
    }
}
