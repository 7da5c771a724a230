//! The asynchronous step of the full-network release check (全网发布, wechat-protocol.md §4.2
//! step 3): the gateway answered `QUERY_AUTH_CODE:$code` with an empty reply and published a
//! `ReleaseCheckJob`; here the code is exchanged (through token-control, which stores the test
//! account like any authorizer) and `$code_from_api` is sent to the test user with the
//! customer-service API and the authorizer token that exchange produced — the token of the
//! account the exchange names, not of the callback path's appid, which need not be the same.
//!
//! Outcomes: sent → ack (and remembered, so a redelivery is not sent twice; a duplicate that
//! arrives while the first is in flight waits for it); token rejected →
//! invalidate through token-control and retry once at once; transient WeChat, token-control or
//! Redis trouble → requeue (bounded by the queue's delivery limit, after which the broker
//! dead-letters it); anything permanent → dead letter with the reason.

use std::time::Duration;

use prost::Message as _;
use serde_json::{Value, json};
use tonic::Code;
use wxhub_bus::{Outcome, Received};
use wxhub_proto::jobs::v1::ReleaseCheckJob;
use wxhub_runtime::Secret;
use wxhub_store::{Ledger, LedgerClaim};
use wxhub_token_client::TokenClient;
use wxhub_wechat_api::{ErrorClass, Host, WechatApi, WechatError};

/// `/cgi-bin/message/custom/send`.
pub const CUSTOM_SEND: &str = "/cgi-bin/message/custom/send";

/// Handles release-check jobs.
#[derive(Clone)]
pub struct ReleaseCheck {
    tokens: TokenClient,
    wechat: WechatApi,
    ledger: Ledger,
    sent_ttl: Duration,
    max_attempts: u64,
}

/// Deliveries of a job whose code token-control refuses before it is given up.
const MAX_ATTEMPTS: u64 = 3;

/// How long one delivery may hold a job (longer than the exchange, token and send deadlines
/// together); a holder that died blocks its duplicates at most this long.
const CLAIM_LEASE: Duration = Duration::from_secs(30);
/// How often a duplicate looks again whether the holder finished.
const CLAIM_POLL: Duration = Duration::from_millis(50);

/// Why a job did not complete, and what the consumer does about it.
#[derive(Debug)]
enum JobError {
    Retry(String),
    Give(String),
}

impl From<JobError> for Outcome {
    fn from(f: JobError) -> Self {
        match f {
            JobError::Retry(reason) => {
                tracing::warn!(reason, "release-check job will be retried");
                Outcome::Requeue
            }
            JobError::Give(reason) => Outcome::DeadLetter(reason),
        }
    }
}

impl ReleaseCheck {
    /// A handler using token-control for codes and tokens, WeChat for the send, and Redis to
    /// remember sent jobs for `sent_ttl`.
    pub fn new(tokens: TokenClient, wechat: WechatApi, ledger: Ledger, sent_ttl: Duration) -> Self {
        Self {
            tokens,
            wechat,
            ledger,
            sent_ttl,
            max_attempts: MAX_ATTEMPTS,
        }
    }

    /// Processes one delivery.
    pub async fn handle(&self, received: Received) -> Outcome {
        let outcome = match self.process(&received).await {
            Ok(()) => Outcome::Ack,
            Err(f) => f.into(),
        };
        let label = match &outcome {
            Outcome::Ack => "sent",
            Outcome::Requeue => "retry",
            Outcome::DeadLetter(_) => "dead_letter",
        };
        metrics::counter!("wxhub_worker_release_check_total", "outcome" => label).increment(1);
        outcome
    }

    async fn process(&self, received: &Received) -> Result<(), JobError> {
        let job = ReleaseCheckJob::decode(received.body.as_slice())
            .map_err(|e| JobError::Give(format!("undecodable ReleaseCheckJob: {e}")))?;
        for (field, value) in [
            ("tenant", &job.tenant),
            ("authorizer_appid", &job.authorizer_appid),
            ("auth_code", &job.auth_code),
            ("open_id", &job.open_id),
        ] {
            if value.is_empty() {
                return Err(JobError::Give(format!("ReleaseCheckJob without {field}")));
            }
        }
        let id = format!(
            "release-check:{}",
            received
                .message_id
                .as_deref()
                .filter(|m| !m.is_empty())
                .unwrap_or(&job.dedupe_key)
        );
        // One holder per job at a time: a duplicate delivered while the first is still being
        // sent or recorded waits for its outcome instead of sending a second message.
        let holder = format!("{:016x}", rand::random::<u64>());
        let waited = tokio::time::Instant::now();
        loop {
            match self
                .ledger
                .claim(&job.tenant, &id, &holder, CLAIM_LEASE)
                .await
            {
                Ok(LedgerClaim::Mine) => break,
                Ok(LedgerClaim::Applied) => {
                    tracing::info!(
                        tenant = job.tenant,
                        job = id,
                        "release-check job already sent; acking the redelivery"
                    );
                    return Ok(());
                }
                // Bounded by the lease: a holder that died stops blocking when it ends.
                Ok(LedgerClaim::Busy) if waited.elapsed() < CLAIM_LEASE + CLAIM_POLL => {
                    tokio::time::sleep(CLAIM_POLL).await;
                }
                Ok(LedgerClaim::Busy) => {
                    return Err(JobError::Retry("another delivery holds the job".into()));
                }
                Err(e) => return Err(JobError::Retry(format!("redis: {e}"))),
            }
        }
        let result = self.carry_out(&job, received, &id).await;
        if result.is_err()
            && let Err(e) = self.ledger.abandon(&job.tenant, &id, &holder).await
        {
            // The claim then ends with its lease.
            tracing::warn!(tenant = job.tenant, job = id, error = %e, "could not give up the claim");
        }
        result
    }

    async fn carry_out(
        &self,
        job: &ReleaseCheckJob,
        received: &Received,
        id: &str,
    ) -> Result<(), JobError> {
        // (a) api_query_auth with the code; the account it names is the one whose token sends
        // the answer. A redelivered job finds the code already exchanged by this path; the
        // callback's appid is then all it has, and the token stored by the first exchange is
        // what (b) uses.
        let (refused, appid) = match self
            .tokens
            .exchange_auth_code(&job.tenant, &job.auth_code)
            .await
        {
            Ok(authorizer) if !authorizer.appid.is_empty() => (None, authorizer.appid),
            Ok(_) => (None, job.authorizer_appid.clone()),
            Err(s) if s.code() == Code::FailedPrecondition => {
                (Some(s), job.authorizer_appid.clone())
            }
            Err(s) => return Err(grpc_failure("exchange the auth code", &s)),
        };
        if appid != job.authorizer_appid {
            tracing::info!(
                tenant = job.tenant,
                path_appid = job.authorizer_appid,
                authorizer = appid,
                "the code belongs to another account than the callback path's; answering as it"
            );
        }
        // (b) the authorizer token, then (c) the customer-service message.
        let token = match (
            self.tokens.access_token(&job.tenant, &appid, 0).await,
            refused,
        ) {
            (Ok(t), _) => t,
            // The code was refused and there is no stored token either: the refusal may pass
            // (no component_verify_ticket yet, WeChat was asked to push one), so a few
            // deliveries are retried before the job is given up with that reason.
            (Err(_), Some(s)) if received.delivery_count + 1 < self.max_attempts => {
                return Err(JobError::Retry(format!(
                    "exchange the auth code: {}",
                    s.message()
                )));
            }
            (Err(_), Some(s)) => {
                return Err(JobError::Give(format!(
                    "exchange the auth code: token-control {:?}: {}",
                    s.code(),
                    s.message()
                )));
            }
            (Err(s), None) => return Err(grpc_failure("get the authorizer token", &s)),
        };
        let body = json!({
            "touser": job.open_id,
            "msgtype": "text",
            "text": { "content": format!("{}_from_api", job.auth_code) },
        });
        let mut token = Secret::new(token.access_token);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.send(&token, &body).await {
                Ok(()) => break,
                Err(e) if e.class() == ErrorClass::Token && attempt == 1 => {
                    let fresh = self
                        .tokens
                        .invalidate(&job.tenant, &appid, token.expose())
                        .await
                        .map_err(|s| grpc_failure("invalidate the rejected token", &s))?;
                    token = Secret::new(fresh.access_token);
                }
                Err(e) => return Err(wechat_failure(&e)),
            }
        }
        if let Err(e) = self.ledger.record(&job.tenant, id, self.sent_ttl).await {
            // The message went out; only the memory of it failed. A redelivery would send it
            // again, which the release check tolerates.
            tracing::warn!(tenant = job.tenant, job = id, error = %e, "sent, but could not record it");
        }
        tracing::info!(
            tenant = job.tenant,
            authorizer = appid,
            "release-check customer-service message sent"
        );
        Ok(())
    }

    async fn send(&self, token: &Secret, body: &Value) -> Result<(), WechatError> {
        let _: Value = self
            .wechat
            .post_with_token(Host::Api, CUSTOM_SEND, token, body)
            .await?;
        Ok(())
    }
}

fn grpc_failure(what: &str, s: &tonic::Status) -> JobError {
    let reason = format!("{what}: token-control {:?}: {}", s.code(), s.message());
    match s.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Unknown => {
            JobError::Retry(reason)
        }
        _ => JobError::Give(reason),
    }
}

fn wechat_failure(e: &WechatError) -> JobError {
    if e.class().is_retryable() {
        if e.outcome_unknown() {
            // A timed-out send may have been delivered: the retry can duplicate it.
            tracing::warn!(error = %e, "custom/send outcome unknown; retrying may send it twice");
        }
        JobError::Retry(e.to_string())
    } else {
        JobError::Give(format!("custom/send: {e}"))
    }
}
