//! Delivery of message jobs: from the `{ns}.send` (and `{ns}.send-bulk`) queue to WeChat.
//!
//! Guarantees:
//! - **A job recorded `sent` is never sent again**, whatever the broker redelivers: a send
//!   starts with a claim in Redis (`Jobs::claim`: queued or retrying → sending, under a lease
//!   with a random owner), and a job in a final state is acked unsent. A worker that dies
//!   between the send and its record leaves the job `sending`; after the lease the next claim
//!   is `Stale` — that send's outcome is unknown: a template is sent again with the same
//!   `client_msg_id` (WeChat keeps one message per openid and id), a customer-service or
//!   subscribe message becomes `unknown` for an operator to replay, never resent by itself.
//! - **A failing job ends `failed` or `dead` with its reason**, never silently: permanent
//!   WeChat codes fail it with WeChat's code and message; transient failures are retried
//!   through the delay queues (`{queue}.retry.{ms}`, TTL queues that dead-letter back; no
//!   delayed-message plugin) and counted by the worker itself (`x-wxhub-attempt` and the
//!   record's count, not the broker's delivery count), then dead-lettered with the reason.
//! - **Waiting is not failing**: the limiter's refusals, 45011 (minute quota), 43117/45066
//!   (per-user cool-downs) and 45009 (daily quota: the (account, API) pair is parked) defer
//!   the job without counting an attempt.
//! - **A store that does not answer loses nothing**: a job whose record cannot be read or
//!   claimed (Redis down, failing over, or refusing) goes back through the delay queues, the
//!   smallest first and longer each time (`x-wxhub-store-failures`), up to the first of a
//!   minute or more; its message is acked. A requeue would count toward the queue's delivery
//!   limit: an outage of a few seconds would have the broker dead-letter the message while the
//!   job stays `queued` in Redis, announced by nothing. Only when that publish fails too is
//!   the message requeued.
//!
//! Classification (messaging.md §4): token (40001/40014/42001) → replace the token and send
//! again at once, once; transient (-1, -1000, HTTP 5xx, connection refused, config errors an
//! operator can fix) → retry with backoff; unknown outcome (timeout or a connection lost after
//! the request was written) → as above; everything else → failed.

use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::Semaphore;
use tonic::Code;
use tracing::Instrument as _;
use wxhub_bus::delay::{self, STORE_FAILURES_HEADER};
use wxhub_bus::{Bus, Outcome, Outgoing, Received};
use wxhub_proto::jobs::v1::{SendBatch, SendJob, SendRoute};
use wxhub_runtime::Secret;
use wxhub_store::{
    AttemptRecord, Claim, JobRecord, JobState, Jobs, Rate, SendGate, Settle, Settled,
};
use wxhub_wechat_api::{ErrorClass, Host, WechatApi, WechatError};

use crate::announce::{SEND_BATCH_TYPE, SEND_JOB_TYPE};
use crate::config::{Limits, WorkerSection};
use crate::tokens::TokenCache;
use crate::validate::api_path;

/// Header carrying the attempts the worker counted so far.
pub const ATTEMPT_HEADER: &str = "x-wxhub-attempt";

/// A limiter wait this short is slept in process rather than sent through a delay queue: a
/// sleeping handler holds a consumer slot, which a backlog of another tenant's refused jobs
/// must not be allowed to fill.
const WAIT_IN_PROCESS: Duration = Duration::from_millis(50);

/// What an announcement's headers count for its job.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    /// Send attempts so far ([`ATTEMPT_HEADER`]).
    attempts: u32,
    /// Deliveries in a row whose store failed ([`STORE_FAILURES_HEADER`]).
    store_failures: u32,
}

/// The delivery's settings (from `[worker]`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub retry_delays: Vec<Duration>,
    pub tiers: Vec<u32>,
    pub rate_limited_delay: Duration,
    pub user_cooldown: Duration,
    pub quota_park: Duration,
    pub lease: Duration,
    pub limits: Limits,
}

impl Settings {
    pub fn from_config(w: &WorkerSection) -> Self {
        Self {
            retry_delays: w
                .retry_delays_ms
                .iter()
                .map(|ms| Duration::from_millis(u64::from(*ms)))
                .collect(),
            tiers: w.delay_tiers(),
            rate_limited_delay: Duration::from_millis(u64::from(w.rate_limited_delay_ms)),
            user_cooldown: Duration::from_millis(u64::from(w.user_cooldown_ms)),
            quota_park: Duration::from_millis(w.quota_park_ms),
            lease: Duration::from_millis(w.lease_ms),
            limits: w.limits,
        }
    }

    /// Attempts before a job is dead: one per retry delay, plus the first.
    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.retry_delays.len()).unwrap_or(u32::MAX - 1) + 1
    }
}

/// Why a send did not succeed.
#[derive(Debug)]
enum SendError {
    Wechat(WechatError),
    TokenControl(tonic::Status),
}

/// What to do with a job after its send.
enum Verdict {
    Sent(i64),
    /// Retry with backoff (counted).
    Retry {
        errcode: i64,
        reason: String,
    },
    /// Wait `delay` without counting an attempt; `park`: the pair's daily quota is spent.
    Defer {
        errcode: i64,
        reason: String,
        delay: Duration,
        park: bool,
    },
    Unknown(String),
    Failed {
        errcode: i64,
        reason: String,
    },
}

/// Sends jobs of one queue. Shared by the consumer's handlers.
pub struct Delivery {
    jobs: Jobs,
    tokens: Arc<TokenCache>,
    wechat: WechatApi,
    bus: Bus,
    queue: String,
    settings: Settings,
    /// Jobs of this queue handled at once (`worker.send_concurrency`/`bulk_concurrency`): a
    /// batch's jobs wait here for their turn.
    sending: Semaphore,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    wxhub_runtime::unix_ms()
}

/// WeChat's daily quotas reset at midnight China Standard Time (UTC+8).
const CST_OFFSET_MS: i64 = 8 * 3_600_000;
const DAY_MS: i64 = 86_400_000;

/// How long a 45009 parks its (account, API) pair: until the quota returns at WeChat's daily reset
/// (midnight CST, plus a minute for clocks that disagree), and at most `max`, after which one job
/// probes — so a quota an operator cleared (`clear_quota`) is found within `max` too.
fn quota_park(now_ms: i64, max: Duration) -> Duration {
    let into_day = (now_ms + CST_OFFSET_MS).rem_euclid(DAY_MS);
    let until_reset = u64::try_from(DAY_MS - into_day + 60_000).unwrap_or(0);
    max.min(Duration::from_millis(until_reset))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Delivery {
    pub fn new(
        jobs: Jobs,
        tokens: Arc<TokenCache>,
        wechat: WechatApi,
        bus: Bus,
        queue: String,
        settings: Settings,
        concurrency: usize,
    ) -> Self {
        Self {
            jobs,
            tokens,
            wechat,
            bus,
            queue,
            settings,
            sending: Semaphore::new(concurrency.max(1)),
        }
    }

    /// Handles one delivery: a [`SendJob`], or a [`SendBatch`] whose jobs are handled at once
    /// (each claimed, sent and settled on its own, at most `concurrency` jobs of this queue at
    /// a time). A batch is acked once every job of it is settled or re-announced; a job that
    /// is dead goes to the dead letters alone. A job that needs its message back (its outcome
    /// not recorded, or a publish the broker refused) has the whole batch requeued: the jobs
    /// settled meanwhile are final or re-announced, and their claims make the second delivery
    /// of them harmless.
    pub async fn handle(&self, received: Received) -> Outcome {
        let header = |name: &str| -> u32 {
            received
                .headers
                .get(name)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let counts = Counts {
            attempts: header(ATTEMPT_HEADER),
            store_failures: header(STORE_FAILURES_HEADER),
        };
        if received.message_type.as_deref() != Some(SEND_BATCH_TYPE) {
            let Ok(msg) = SendJob::decode(received.body.as_slice()) else {
                return counted(Outcome::DeadLetter("undecodable SendJob".into()));
            };
            return counted(self.process(&msg, counts).await);
        }
        let Ok(batch) = SendBatch::decode(received.body.as_slice()) else {
            return counted(Outcome::DeadLetter("undecodable SendBatch".into()));
        };
        // Each job continues its own trace (the call that enqueued it), in a span of its own.
        let outcomes = futures::future::join_all(batch.jobs.iter().map(|job| {
            let span = tracing::info_span!(
                "consume",
                queue = self.queue.as_str(),
                routing_key = received.routing_key.as_str(),
                message_id = job.job_id.as_str(),
                batch = batch.jobs.len(),
            );
            wxhub_runtime::trace::set_parent_from(&span, &job.trace);
            async move { counted(self.process(job, counts).await) }.instrument(span)
        }))
        .await;
        let mut outcome = Outcome::Ack;
        for (job, o) in batch.jobs.iter().zip(outcomes) {
            match o {
                Outcome::Ack => {}
                Outcome::Requeue => outcome = Outcome::Requeue,
                Outcome::DeadLetter(reason) => {
                    let alone = Received {
                        message_id: Some(job.job_id.clone()),
                        message_type: Some(SEND_JOB_TYPE.into()),
                        body: job.encode_to_vec(),
                        ..received.clone()
                    };
                    if let Err(e) =
                        wxhub_bus::dead_letter(&self.bus, &self.queue, &alone, &reason).await
                    {
                        tracing::warn!(job = job.job_id, error = %e, "cannot dead-letter a job of a batch; requeueing the batch");
                        outcome = Outcome::Requeue;
                    }
                }
            }
        }
        outcome
    }

    /// Handles job `msg`, announced with `counts` in its headers.
    async fn process(&self, msg: &SendJob, counts: Counts) -> Outcome {
        let header_attempts = counts.attempts;
        let Ok(_sending) = self.sending.acquire().await else {
            return Outcome::Requeue;
        };
        let (tenant, id) = (msg.tenant.as_str(), msg.job_id.as_str());
        // The route names the keys the claim checks; an announcement without one (a held job,
        // a replay) has the job read first.
        let job = match &msg.route {
            Some(route) => routed(tenant, id, route),
            None => match self.jobs.get(tenant, id).await {
                Ok(Some(job)) if job.state.is_final() => return Outcome::Ack,
                Ok(Some(job)) => job,
                Ok(None) => return missing(tenant, id),
                Err(e) => return self.store_failed(msg, counts, "read the job", &e).await,
            },
        };
        let Some(api) = api_path(&job.api) else {
            return Outcome::DeadLetter(format!("job {id} names no send API"));
        };
        // One script: the job's state, the pair's park (45009 spent its daily quota), the
        // limiter's units and the lease, all or nothing. Short limiter waits are slept here.
        let owner = format!("{:016x}", rand::random::<u64>());
        let (subjects, rates) = self.buckets(&job);
        let buckets: Vec<(&str, Rate)> = subjects.iter().map(String::as_str).zip(rates).collect();
        let gate = SendGate {
            park: Some((&job.appid, api)),
            buckets: &buckets,
        };
        let mut tries = 0;
        let (claim, stored) = loop {
            let now = now_ms();
            let claim = match self
                .jobs
                .claim_to_send(
                    tenant,
                    id,
                    &job.campaign,
                    gate,
                    &owner,
                    now,
                    now + ms(self.settings.lease),
                )
                .await
            {
                Ok(c) => c,
                Err(e) => return self.store_failed(msg, counts, "claim the job", &e).await,
            };
            match claim {
                (Claim::Limited(wait), _) if wait <= WAIT_IN_PROCESS && tries < 3 => {
                    tries += 1;
                    tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
                }
                other => break other,
            }
        };
        // Claimed (or stale): the record as stored, body included, came with the claim.
        let job = stored.unwrap_or(job);
        let made = match claim {
            Claim::Claimed { attempts_made } => attempts_made,
            Claim::Stale { attempts_made } if job.kind == "template" => {
                tracing::warn!(
                    tenant,
                    job = id,
                    "a sender stopped mid-send; resending the template with the same client_msg_id"
                );
                attempts_made
            }
            Claim::Stale { .. } => {
                let reason = "the worker sending it stopped before recording the outcome; \
                              it may have been delivered (replay to send it again)";
                return self
                    .settle(
                        &job,
                        &owner,
                        JobState::Unknown,
                        0,
                        reason,
                        0,
                        0,
                        None,
                        false,
                    )
                    .await
                    .map_or_else(|o| o, |()| Outcome::Ack);
            }
            Claim::Busy => {
                return self
                    .announce_later(&job, header_attempts, self.settings.lease, false)
                    .await;
            }
            Claim::Parked(left) => {
                metrics::counter!("wxhub_worker_deferred_total", "reason" => "parked").increment(1);
                return self
                    .announce_later(&job, header_attempts, left, false)
                    .await;
            }
            Claim::Limited(wait) => {
                metrics::counter!("wxhub_worker_deferred_total", "reason" => "limiter")
                    .increment(1);
                return self
                    .announce_later(&job, header_attempts, wait.max(WAIT_IN_PROCESS), false)
                    .await;
            }
            Claim::Done(_) => return Outcome::Ack,
            Claim::Missing => return missing(tenant, id),
        };
        let attempts = made.max(header_attempts);
        let started = now_ms();
        let result = self.send(&job, api).await;
        let attempt = |errcode: i64, errmsg: String| AttemptRecord {
            at_ms: started,
            errcode,
            errmsg,
        };
        let verdict = verdict(&job, result, &self.settings);
        match verdict {
            Verdict::Sent(msgid) => {
                metrics::counter!("wxhub_worker_sends_total", "kind" => kind_label(&job.kind), "outcome" => "sent").increment(1);
                let rec = attempt(0, "ok".into());
                self.settle(
                    &job,
                    &owner,
                    JobState::Sent,
                    0,
                    "",
                    msgid,
                    0,
                    Some(rec),
                    true,
                )
                .await
                .map_or_else(|o| o, |()| Outcome::Ack)
            }
            Verdict::Failed { errcode, reason } => {
                metrics::counter!("wxhub_worker_sends_total", "kind" => kind_label(&job.kind), "outcome" => "failed").increment(1);
                let rec = attempt(errcode, reason.clone());
                self.settle(
                    &job,
                    &owner,
                    JobState::Failed,
                    errcode,
                    &reason,
                    0,
                    0,
                    Some(rec),
                    true,
                )
                .await
                .map_or_else(|o| o, |()| Outcome::Ack)
            }
            Verdict::Unknown(reason) => {
                metrics::counter!("wxhub_worker_sends_total", "kind" => kind_label(&job.kind), "outcome" => "unknown").increment(1);
                let rec = attempt(0, reason.clone());
                self.settle(
                    &job,
                    &owner,
                    JobState::Unknown,
                    0,
                    &reason,
                    0,
                    0,
                    Some(rec),
                    true,
                )
                .await
                .map_or_else(|o| o, |()| Outcome::Ack)
            }
            Verdict::Defer {
                errcode,
                reason,
                delay,
                park,
            } => {
                let label = if park { "quota" } else { "rate_limited" };
                metrics::counter!("wxhub_worker_deferred_total", "reason" => label).increment(1);
                if park {
                    metrics::counter!("wxhub_worker_parked_total", "api" => api).increment(1);
                    if let Err(e) = self.jobs.park(&job.tenant, &job.appid, api, delay).await {
                        tracing::warn!(error = %e, "cannot park the API");
                    }
                }
                let rec = attempt(errcode, reason.clone());
                let next = now_ms() + ms(delay);
                if let Err(o) = self
                    .settle(
                        &job,
                        &owner,
                        JobState::Retrying,
                        errcode,
                        &reason,
                        0,
                        next,
                        Some(rec),
                        false,
                    )
                    .await
                {
                    return o;
                }
                self.announce_later(&job, attempts, delay, false).await
            }
            Verdict::Retry { errcode, reason } => {
                let made = attempts + 1;
                let rec = attempt(errcode, reason.clone());
                if made >= self.settings.max_attempts() {
                    metrics::counter!("wxhub_worker_sends_total", "kind" => kind_label(&job.kind), "outcome" => "dead").increment(1);
                    let why = format!("gave up after {made} attempts: {reason}");
                    return match self
                        .settle(
                            &job,
                            &owner,
                            JobState::Dead,
                            errcode,
                            &why,
                            0,
                            0,
                            Some(rec),
                            true,
                        )
                        .await
                    {
                        Ok(()) => Outcome::DeadLetter(why),
                        Err(o) => o,
                    };
                }
                metrics::counter!("wxhub_worker_sends_total", "kind" => kind_label(&job.kind), "outcome" => "retry").increment(1);
                let index = usize::try_from(made - 1).unwrap_or(0);
                let delay =
                    self.settings.retry_delays[index.min(self.settings.retry_delays.len() - 1)];
                let next = now_ms() + ms(delay);
                if let Err(o) = self
                    .settle(
                        &job,
                        &owner,
                        JobState::Retrying,
                        errcode,
                        &reason,
                        0,
                        next,
                        Some(rec),
                        true,
                    )
                    .await
                {
                    return o;
                }
                self.announce_later(&job, made, delay, true).await
            }
        }
    }

    /// The limiter buckets a send of `job` takes a unit from: its account's API of its kind
    /// and, for templates, its recipient (subjects and rates, in order).
    fn buckets(&self, job: &JobRecord) -> (Vec<String>, Vec<Rate>) {
        let limits = &self.settings.limits;
        let rate: Rate = match job.kind.as_str() {
            "custom" => limits.custom,
            "template" => limits.template,
            _ => limits.subscribe,
        };
        let account = if job.appid.is_empty() {
            "-"
        } else {
            &job.appid
        };
        let mut subjects = vec![format!("send:{account}:{}", job.kind)];
        let mut rates = vec![rate];
        if job.kind == "template" {
            subjects.push(format!("openid:{account}:{}", job.touser));
            rates.push(limits.template_per_openid);
        }
        (subjects, rates)
    }

    async fn send(&self, job: &JobRecord, api: &'static str) -> Result<Value, SendError> {
        // Posted as stored: checked to be JSON, not parsed into a tree and written out again.
        let body: &RawValue = serde_json::from_str(&job.body).map_err(|e| {
            SendError::Wechat(WechatError::Decode {
                api,
                detail: format!("stored body is not JSON: {e}"),
            })
        })?;
        let mut token = self
            .tokens
            .get(&job.tenant, &job.appid)
            .await
            .map_err(SendError::TokenControl)?;
        let mut healed = false;
        loop {
            match self.post(api, &token, body).await {
                Err(e) if e.class() == ErrorClass::Token && !healed => {
                    healed = true;
                    token = self
                        .tokens
                        .rejected(&job.tenant, &job.appid, &token)
                        .await
                        .map_err(SendError::TokenControl)?;
                }
                other => return other.map_err(SendError::Wechat),
            }
        }
    }

    async fn post(
        &self,
        api: &'static str,
        token: &Secret,
        body: &RawValue,
    ) -> Result<Value, WechatError> {
        self.wechat
            .post_with_token(Host::Api, api, token, body)
            .await
    }

    /// Records an outcome; `Err` carries what the consumer should do when it could not be
    /// recorded (requeue: the redelivery finds the job `sending` and waits for the lease).
    #[allow(clippy::too_many_arguments)]
    async fn settle(
        &self,
        job: &JobRecord,
        owner: &str,
        state: JobState,
        errcode: i64,
        reason: &str,
        msgid: i64,
        next_at_ms: i64,
        attempt: Option<AttemptRecord>,
        count_attempt: bool,
    ) -> Result<(), Outcome> {
        let s = Settle {
            state,
            errcode,
            reason: reason.to_owned(),
            msgid,
            next_at_ms,
            attempt,
            count_attempt,
            now_ms: now_ms(),
            campaign: job.campaign.clone(),
        };
        let mut last = None;
        for i in 0..3 {
            match self
                .jobs
                .settle(&job.tenant, &job.id, &job.appid, owner, &s)
                .await
            {
                Ok(Settled::Ok) => return Ok(()),
                Ok(Settled::Lost) => {
                    tracing::warn!(
                        tenant = job.tenant,
                        job = job.id,
                        "lost the job's lease before recording its outcome"
                    );
                    return Err(Outcome::Ack);
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100 * (i + 1))).await;
        }
        tracing::error!(tenant = job.tenant, job = job.id, state = state.as_str(), error = ?last, "cannot record the outcome");
        Err(Outcome::Requeue)
    }

    /// Announces `job` again after `delay` ([`Self::publish_later`]), with `attempts` in the
    /// header.
    async fn announce_later(
        &self,
        job: &JobRecord,
        attempts: u32,
        delay: Duration,
        jitter: bool,
    ) -> Outcome {
        let msg = crate::announce::send_job(&job.tenant, &job.id, Some(route_of(job)));
        let headers = [(ATTEMPT_HEADER.to_owned(), attempts.to_string())];
        self.publish_later(&msg, &headers, delay, jitter).await
    }

    /// Job `msg` could not be read or claimed (`what` failed with `e`): it goes back through
    /// the delay queues with one more store failure counted, as announced otherwise (its route,
    /// trace and attempts), and this delivery is acked.
    async fn store_failed(
        &self,
        msg: &SendJob,
        counts: Counts,
        what: &str,
        e: &(dyn std::fmt::Display + Sync),
    ) -> Outcome {
        let failures = counts.store_failures.saturating_add(1);
        let delay = delay::store_retry(&self.settings.tiers, counts.store_failures);
        tracing::warn!(
            tenant = msg.tenant,
            job = msg.job_id,
            failures,
            error = %e,
            "cannot {what}; the job waits {delay:?} in a delay queue"
        );
        metrics::counter!("wxhub_worker_deferred_total", "reason" => "store").increment(1);
        let headers = [
            (ATTEMPT_HEADER.to_owned(), counts.attempts.to_string()),
            (STORE_FAILURES_HEADER.to_owned(), failures.to_string()),
        ];
        self.publish_later(msg, &headers, delay, false).await
    }

    /// Publishes `msg` with `headers` to the delay queue that fits `delay` (the smallest tier
    /// at least as long, else the longest); then the current delivery is acked (requeued if the
    /// publish fails: `delay::publish`). `jitter`: up to 20 % earlier (retries of one burst
    /// spread).
    async fn publish_later(
        &self,
        msg: &SendJob,
        headers: &[(String, String)],
        delay: Duration,
        jitter: bool,
    ) -> Outcome {
        let body = msg.encode_to_vec();
        let out = Outgoing {
            exchange: "",
            routing_key: "",
            body: &body,
            message_id: &msg.job_id,
            message_type: SEND_JOB_TYPE,
            headers,
        };
        delay::publish(
            &self.bus,
            &self.queue,
            &self.settings.tiers,
            &out,
            delay,
            jitter,
        )
        .await
    }
}

/// The job an announcement's route describes, before its claim brings the rest (its body).
fn routed(tenant: &str, id: &str, r: &SendRoute) -> JobRecord {
    JobRecord {
        id: id.to_owned(),
        tenant: tenant.to_owned(),
        appid: r.appid.clone(),
        kind: r.kind.clone(),
        api: r.api.clone(),
        touser: r.touser.clone(),
        campaign: r.campaign.clone(),
        ..JobRecord::default()
    }
}

/// The route of `job`, for its announcements.
pub fn route_of(job: &JobRecord) -> SendRoute {
    SendRoute {
        appid: job.appid.clone(),
        kind: job.kind.clone(),
        api: job.api.clone(),
        touser: job.touser.clone(),
        campaign: job.campaign.clone(),
    }
}

/// `outcome`, counted in `wxhub_worker_send_deliveries_total` (one per job).
fn counted(outcome: Outcome) -> Outcome {
    let label = outcome.label();
    metrics::counter!("wxhub_worker_send_deliveries_total", "outcome" => label).increment(1);
    outcome
}

fn missing(tenant: &str, id: &str) -> Outcome {
    tracing::warn!(
        tenant,
        job = id,
        "job record missing (expired?); dropping its message"
    );
    Outcome::Ack
}

fn kind_label(kind: &str) -> &'static str {
    match kind {
        "custom" => "custom",
        "template" => "template",
        "subscribe" => "subscribe",
        "bizsend" => "bizsend",
        _ => "other",
    }
}

/// WeChat's codes that mean "wait, then the same send may succeed" (not counted): per-user
/// frequency (43117), retry too fast (45066).
const USER_COOLDOWN_CODES: [i64; 2] = [43117, 45066];

fn verdict(job: &JobRecord, result: Result<Value, SendError>, s: &Settings) -> Verdict {
    let e = match result {
        Ok(v) => return Verdict::Sent(v.get("msgid").and_then(Value::as_i64).unwrap_or(0)),
        Err(SendError::TokenControl(status)) => {
            let reason = format!("token-control {:?}: {}", status.code(), status.message());
            return match status.code() {
                Code::NotFound
                | Code::FailedPrecondition
                | Code::PermissionDenied
                | Code::InvalidArgument => Verdict::Failed { errcode: 0, reason },
                _ => Verdict::Retry { errcode: 0, reason },
            };
        }
        Err(SendError::Wechat(e)) => e,
    };
    let errcode = e.code().unwrap_or(0);
    let reason = match &e {
        WechatError::Api { message, .. } => message.clone(),
        other => other.to_string(),
    };
    match (e.code(), &e) {
        (Some(45009), _) => Verdict::Defer {
            errcode,
            reason,
            delay: quota_park(now_ms(), s.quota_park),
            park: true,
        },
        (Some(45011), _) => Verdict::Defer {
            errcode,
            reason,
            delay: s.rate_limited_delay,
            park: false,
        },
        (Some(code), _) if USER_COOLDOWN_CODES.contains(&code) => Verdict::Defer {
            errcode,
            reason,
            delay: s.user_cooldown,
            park: false,
        },
        // Written, then no answer: it may have been delivered.
        (None, WechatError::Timeout { .. } | WechatError::Transport { .. }) => {
            if job.kind == "template" {
                Verdict::Retry {
                    errcode,
                    reason: format!(
                        "{reason} (outcome unknown; resent with the same client_msg_id)"
                    ),
                }
            } else {
                Verdict::Unknown(format!(
                    "{reason}: the request was sent and may have been delivered; not resent automatically"
                ))
            }
        }
        _ => match e.class() {
            // A second token rejection, a stale ticket, a setup error an operator can fix:
            // retried, then dead.
            ErrorClass::Transient
            | ErrorClass::Token
            | ErrorClass::Ticket
            | ErrorClass::Config
            | ErrorClass::RefreshToken => Verdict::Retry { errcode, reason },
            _ => Verdict::Failed { errcode, reason },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-28 00:00 CST, in ms since the epoch (16:00 UTC the day before).
    const MIDNIGHT_CST: i64 = 1_795_795_200_000;

    #[test]
    fn a_quota_park_ends_at_wechats_daily_reset_or_after_the_probe_interval() {
        let hour = Duration::from_secs(3600);
        let min = 60_000;
        // 23:30 CST: parked until 00:01, not for the full hour.
        assert_eq!(
            quota_park(MIDNIGHT_CST - 30 * min, hour),
            Duration::from_secs(31 * 60)
        );
        // 10:00 CST: the reset is 14 h away; the pair is probed after the interval.
        assert_eq!(quota_park(MIDNIGHT_CST + 600 * min, hour), hour);
        // Just after the reset: a full day away, the interval again.
        assert_eq!(quota_park(MIDNIGHT_CST + 2 * min, hour), hour);
        // 23:59:30 CST: 1.5 min.
        assert_eq!(
            quota_park(MIDNIGHT_CST - 30_000, hour),
            Duration::from_secs(90)
        );
    }
}
