//! The gRPC service `wxhub.messaging.v1.Messaging`.
//!
//! Every call is admitted like token-control's (`wxhub_runtime::grpc::admit`: API key, tenant
//! id, the client's tenants). Enqueue then checks the message (`validate`), the account (known
//! and authorized), stores the job, publishes it with the broker's confirm (in one message with
//! the calls that arrive meanwhile: `crate::announce`), and only then answers with its id; a failed publish removes the job again (UNAVAILABLE, nothing queued).
//! A job over its tenant's window (`worker.tenant_window`) is stored and held instead, and the
//! answer comes once it is stored: the feeder announces it in turn (`crate::feeder`).

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use wxhub_proto::jobs::v1::SendJob;
use wxhub_proto::messaging::v1 as pb;
use wxhub_proto::messaging::v1::enqueue_request::Message;
use wxhub_proto::messaging::v1::messaging_server::Messaging;
use wxhub_runtime::{Tenant, TenantKind, TenantsHandle};
use wxhub_store::jobs::{new_id, tenant_of};
use wxhub_store::{
    AuthorizerStatus, Authorizers, CampaignRecipient, CampaignRecord, Campaigns, Created,
    JobRecord, JobState, Jobs, NewCampaign, NewJob, StateChange,
};

use crate::announce::{Announcer, new_route, publish_job, send_job};
use crate::validate::{self, Prepared};

/// The messaging service.
#[derive(Clone)]
pub struct MessagingService {
    tenants: TenantsHandle,
    jobs: Jobs,
    campaigns: Campaigns,
    max_recipients: usize,
    authorizers: Authorizers,
    announcer: Announcer,
    timeout: Duration,
}

impl std::fmt::Debug for MessagingService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessagingService").finish_non_exhaustive()
    }
}

fn unknown_authorizer(appid: &str) -> Status {
    Status::not_found(format!("unknown authorizer {appid:?}"))
}

fn revoked_authorizer(appid: &str) -> Status {
    Status::failed_precondition(format!("authorizer {appid:?} revoked the authorization"))
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Status {
    tracing::warn!(error = %e, "{what}");
    Status::unavailable(format!("{what}; nothing was queued, retry"))
}

/// The protobuf view of a job.
pub fn job_reply(j: &JobRecord) -> pb::Job {
    let state = match j.state {
        JobState::Queued => pb::JobState::Queued,
        JobState::Sending => pb::JobState::Sending,
        JobState::Retrying => pb::JobState::Retrying,
        JobState::Sent => pb::JobState::Sent,
        JobState::Delivered => pb::JobState::Delivered,
        JobState::DeliveryFailed => pb::JobState::DeliveryFailed,
        JobState::Failed => pb::JobState::Failed,
        JobState::Unknown => pb::JobState::Unknown,
        JobState::Dead => pb::JobState::Dead,
        JobState::Cancelled => pb::JobState::Cancelled,
    };
    pb::Job {
        id: j.id.clone(),
        tenant: j.tenant.clone(),
        appid: j.appid.clone(),
        kind: j.kind.clone(),
        touser: j.touser.clone(),
        state: state as i32,
        state_name: j.state.as_str().to_owned(),
        attempts_made: j.attempts_made,
        next_attempt_at_ms: j.next_at_ms,
        errcode: j.errcode,
        reason: j.reason.clone(),
        msgid: j.msgid,
        attempts: j
            .attempts
            .iter()
            .map(|a| pb::Attempt {
                at_ms: a.at_ms,
                errcode: a.errcode,
                errmsg: a.errmsg.clone(),
            })
            .collect(),
        delivery_status: j.delivery.clone(),
        idempotency_key: j.idempotency_key.clone(),
        created_at_ms: j.created_at_ms,
        updated_at_ms: j.updated_at_ms,
    }
}

impl MessagingService {
    pub fn new(
        tenants: TenantsHandle,
        jobs: Jobs,
        campaigns: Campaigns,
        max_recipients: usize,
        authorizers: Authorizers,
        announcer: Announcer,
        timeout: Duration,
    ) -> Self {
        Self {
            tenants,
            jobs,
            campaigns,
            max_recipients,
            authorizers,
            announcer,
            timeout,
        }
    }

    fn admit<T>(
        &self,
        rpc: &'static str,
        req: &Request<T>,
        tenant: &str,
    ) -> Result<Arc<Tenant>, Status> {
        let result = wxhub_runtime::grpc::admit(&self.tenants.current(), req, tenant);
        if let Err(status) = &result {
            metrics::counter!("wxhub_messaging_rpc_rejected_total", "rpc" => rpc, "code" => format!("{:?}", status.code()))
                .increment(1);
        }
        result
    }

    /// The account a request names: the authorizer appid (component tenants) or "" for the
    /// tenant's own account. Whether the authorizer is known and not revoked is checked by
    /// [`Self::authorized`] or, on Enqueue, by the job store's create script.
    fn account(tenant: &Tenant, appid: &str) -> Result<String, Status> {
        let own = appid.is_empty() || appid == "-" || appid == tenant.app_id.as_str();
        match tenant.kind {
            TenantKind::Wecom => Err(Status::failed_precondition(
                "WeCom tenants have no customer-service, template or subscribe sends",
            )),
            TenantKind::OfficialAccount if own => Ok(String::new()),
            TenantKind::OfficialAccount => Err(Status::invalid_argument(format!(
                "appid: an Official Account tenant sends as itself: leave it empty, \"-\" or {:?}",
                tenant.app_id.as_str()
            ))),
            TenantKind::Component if own => Err(Status::invalid_argument(
                "appid: a component tenant sends as one of its authorizers: name its appid",
            )),
            TenantKind::Component => {
                if !wxhub_runtime::AppId::is_valid(appid) {
                    return Err(Status::invalid_argument(
                        "appid must match (wx|ww)[A-Za-z0-9_-]{1,30}",
                    ));
                }
                Ok(appid.to_owned())
            }
        }
    }

    /// Refuses an authorizer `appid` (not "", the tenant's own account) that is unknown or
    /// revoked.
    async fn authorized(&self, tenant: &Tenant, appid: &str) -> Result<(), Status> {
        if appid.is_empty() {
            return Ok(());
        }
        let record = self
            .authorizers
            .get(tenant.id.as_str(), appid)
            .await
            .map_err(|e| unavailable("cannot read the authorizer", e))?
            .ok_or_else(|| unknown_authorizer(appid))?;
        if record.status == AuthorizerStatus::Revoked {
            return Err(revoked_authorizer(appid));
        }
        Ok(())
    }

    /// Checks one message and makes its job (not stored yet): INVALID_ARGUMENT naming the field,
    /// or a failed precondition of the tenant's kind.
    fn prepare_job(tenant: &Tenant, r: &pb::EnqueueRequest, now: i64) -> Result<NewJob, Status> {
        let Prepared {
            kind,
            api,
            touser,
            mut body,
        } = validate::prepare(r.message.as_ref())?;
        let key = (!r.idempotency_key.is_empty()).then_some(r.idempotency_key.as_str());
        if let Some(k) = key {
            validate::check_idempotency_key(k)?;
        }
        let appid = Self::account(tenant, &r.appid)?;
        let id = new_id(tenant.id.as_str(), now);
        if kind == "template" && !body.contains_key("client_msg_id") {
            // WeChat deduplicates (openid, client_msg_id): what makes a template resend after
            // an unknown outcome safe.
            body.insert(
                "client_msg_id".into(),
                serde_json::Value::String(id.clone()),
            );
        }
        Ok(NewJob {
            id,
            appid,
            kind: kind.to_owned(),
            api: api.to_owned(),
            touser,
            body: serde_json::Value::Object(body).to_string(),
            idempotency_key: key.map(str::to_owned),
            campaign: None,
            now_ms: now,
        })
    }

    /// The answer for a job the create script has seen: `None` when it was stored new and is
    /// to be announced now, else the job to answer with (held, or the idempotency key's
    /// existing job) or the refusal.
    async fn stored(
        &self,
        tenant_id: &str,
        job: &NewJob,
        created: Created,
    ) -> Result<Option<pb::Job>, Status> {
        let kind = job.kind.clone();
        match created {
            Created::UnknownAccount => Err(unknown_authorizer(&job.appid)),
            Created::RevokedAccount => Err(revoked_authorizer(&job.appid)),
            Created::OverHeld => {
                metrics::counter!("wxhub_messaging_enqueued_total", "kind" => kind, "result" => "over_held").increment(1);
                Err(Status::resource_exhausted(format!(
                    "tenant {tenant_id} already holds worker.tenant_held_max messages waiting \
                     for its window; nothing was stored, retry later"
                )))
            }
            Created::Existing(existing) => {
                metrics::counter!("wxhub_messaging_enqueued_total", "kind" => kind, "result" => "existing").increment(1);
                let found = self.get(tenant_id, &existing).await?;
                if found.state == pb::JobState::Queued as i32 {
                    // A worker that died between storing this job and its confirmed publish
                    // left it queued and unannounced, and its caller without an answer: the
                    // caller's retry with the same key announces it (twice at worst; the claim
                    // lets one send).
                    self.announce(tenant_id, vec![send_job(tenant_id, &existing, None)])
                        .await
                        .pop()
                        .unwrap_or_else(|| Err(Status::internal("no announcement")))?;
                }
                Ok(Some(found))
            }
            Created::Held => {
                // Over the tenant's window: stored, and the feeder announces it in turn.
                metrics::counter!("wxhub_messaging_enqueued_total", "kind" => kind, "result" => "held").increment(1);
                Ok(Some(job_reply(&job.record(tenant_id))))
            }
            Created::New => Ok(None),
        }
    }

    /// The answer for a new job once its announcement is confirmed or refused: a refused one
    /// is removed again (nothing queued).
    async fn announced(
        &self,
        tenant_id: &str,
        job: &NewJob,
        published: Result<(), Status>,
    ) -> Result<pb::Job, Status> {
        if let Err(refused) = published {
            if let Err(e) = self
                .jobs
                .abandon(tenant_id, &job.id, job.idempotency_key.as_deref())
                .await
            {
                tracing::warn!(job = job.id, error = %e, "cannot remove an unpublished job");
            }
            return Err(refused);
        }
        metrics::counter!("wxhub_messaging_enqueued_total", "kind" => job.kind.clone(), "result" => "new")
            .increment(1);
        // What was stored, without reading it back.
        Ok(job_reply(&job.record(tenant_id)))
    }

    async fn enqueue(&self, req: Request<pb::EnqueueRequest>) -> Result<pb::Job, Status> {
        let tenant = self.admit("Enqueue", &req, &req.get_ref().tenant)?;
        let job = Self::prepare_job(&tenant, req.get_ref(), wxhub_runtime::unix_ms())?;
        self.enqueue_prepared(tenant.id.as_str(), vec![Ok(job)])
            .await
            .pop()
            .unwrap_or_else(|| Err(Status::internal("no answer")))
    }

    /// EnqueueBatch: every message as [`Self::enqueue`] would take it alone.
    async fn enqueue_batch(
        &self,
        req: Request<pb::EnqueueBatchRequest>,
    ) -> Result<pb::EnqueueBatchResponse, Status> {
        let tenant = self.admit("EnqueueBatch", &req, &req.get_ref().tenant)?;
        let r = req.into_inner();
        if r.messages.is_empty() || r.messages.len() > ENQUEUE_BATCH_MAX {
            return Err(Status::invalid_argument(format!(
                "messages: 1 to {ENQUEUE_BATCH_MAX} per call (got {})",
                r.messages.len()
            )));
        }
        let tenant_id = tenant.id.as_str();
        let now = wxhub_runtime::unix_ms();
        let prepared = r
            .messages
            .iter()
            .map(|m| {
                if !m.tenant.is_empty() && m.tenant != tenant_id {
                    return Err(Status::invalid_argument(format!(
                        "tenant: empty or the batch's tenant {tenant_id:?}"
                    )));
                }
                Self::prepare_job(&tenant, m, now)
            })
            .collect();
        Ok(batch_reply(
            self.enqueue_prepared(tenant_id, prepared).await,
        ))
    }

    /// Stores the checked messages of one tenant (an `Err` is a message already refused) with
    /// one create script call per `CREATE_AT_ONCE`, announces the new ones in the group commit
    /// together, and answers each message in order as Enqueue answers one: its job once stored
    /// and its announcement confirmed (or held), else its refusal. A message whose idempotency
    /// key an earlier one of the same call stored answers as that one does.
    async fn enqueue_prepared(
        &self,
        tenant_id: &str,
        prepared: Vec<Result<NewJob, Status>>,
    ) -> Vec<Result<pb::Job, Status>> {
        // results[i] answers message i; jobs[j] is the job of message at[j].
        let mut results: Vec<Result<pb::Job, Status>> = Vec::with_capacity(prepared.len());
        let (mut jobs, mut at) = (Vec::new(), Vec::new());
        for (i, p) in prepared.into_iter().enumerate() {
            match p {
                Ok(job) => {
                    at.push(i);
                    jobs.push(job);
                    results.push(Err(Status::internal("not answered")));
                }
                Err(refused) => results.push(Err(refused)),
            }
        }
        // One script checks each authorizer and stores each job.
        let created = match self.jobs.create_all(tenant_id, &jobs, true).await {
            Ok(created) => created,
            Err(e) => {
                let refused = unavailable("cannot store the job", e);
                for &i in &at {
                    results[i] = Err(refused.clone());
                }
                return results;
            }
        };
        let (mut seen, mut same_as) = (Vec::new(), Vec::new());
        for (j, created) in created.into_iter().enumerate() {
            if let Created::Existing(id) = &created
                && let Some(first) = jobs[..j].iter().position(|o| &o.id == id)
            {
                same_as.push((at[j], at[first]));
                continue;
            }
            seen.push((j, created));
        }
        // At once: a retried batch's existing jobs are each read (and a queued one announced
        // again) side by side, not one after another.
        let answers = futures::future::join_all(seen.into_iter().map(|(j, created)| {
            let job = &jobs[j];
            async move { (j, self.stored(tenant_id, job, created).await) }
        }))
        .await;
        let mut new = Vec::new();
        for (j, answer) in answers {
            match answer {
                Ok(None) => new.push(j),
                Ok(Some(answer)) => results[at[j]] = Ok(answer),
                Err(refused) => results[at[j]] = Err(refused),
            }
        }
        let announcements = new
            .iter()
            .map(|&j| send_job(tenant_id, &jobs[j].id, Some(new_route(&jobs[j]))))
            .collect();
        let published = self.announce(tenant_id, announcements).await;
        for (&j, published) in new.iter().zip(published) {
            results[at[j]] = self.announced(tenant_id, &jobs[j], published).await;
        }
        for (i, first) in same_as {
            results[i] = results[first].clone();
        }
        results
    }

    /// Publishes jobs' announcements with confirm, within the call's deadline, and returns each
    /// one's result in order. A worker that just started (or is reconnecting) waits for its
    /// broker connection rather than refusing the jobs at once.
    async fn announce(&self, tenant: &str, jobs: Vec<SendJob>) -> Vec<Result<(), Status>> {
        let n = jobs.len();
        let published = tokio::time::timeout(self.timeout, async {
            if !self.announcer.bus().is_connected() {
                self.announcer.bus().wait_connected(self.timeout).await;
            }
            self.announcer.announce_all(jobs).await
        })
        .await;
        let refused = |e: &dyn std::fmt::Display| {
            tracing::warn!(tenant, jobs = n, error = %e, "cannot publish jobs");
            Status::unavailable("cannot publish the job; nothing was queued, retry")
        };
        match published {
            Ok(results) => {
                let mut status = None;
                results
                    .into_iter()
                    .map(|r| r.map_err(|e| status.get_or_insert_with(|| refused(&e)).clone()))
                    .collect()
            }
            Err(_) => vec![Err(refused(&"the broker did not confirm in time")); n],
        }
    }

    async fn get(&self, tenant: &str, id: &str) -> Result<pb::Job, Status> {
        self.jobs
            .get(tenant, id)
            .await
            .map_err(|e| unavailable("cannot read the job", e))?
            .map(|j| job_reply(&j))
            .ok_or_else(|| Status::not_found(format!("unknown job {id:?}")))
    }

    fn job_tenant<'a, T>(
        &self,
        rpc: &'static str,
        req: &Request<T>,
        id: &'a str,
    ) -> Result<&'a str, Status> {
        let tenant = tenant_of(id).ok_or_else(|| {
            Status::invalid_argument("job_id must be a job id ({tenant}.{20 hex digits})")
        })?;
        self.admit(rpc, req, tenant)?;
        Ok(tenant)
    }

    async fn create_campaign(
        &self,
        req: Request<pb::CreateCampaignRequest>,
    ) -> Result<pb::Campaign, Status> {
        let tenant = self.admit("CreateCampaign", &req, &req.get_ref().tenant)?;
        let r = req.into_inner();
        if r.recipients.is_empty() {
            return Err(Status::invalid_argument(
                "recipients: at least one is required",
            ));
        }
        if r.recipients.len() > self.max_recipients {
            return Err(Status::invalid_argument(format!(
                "recipients: at most {} per campaign (got {})",
                self.max_recipients,
                r.recipients.len()
            )));
        }
        use pb::create_campaign_request::Message as C;
        let as_message =
            |to: &str, data: &std::collections::HashMap<String, String>| -> Option<Message> {
                Some(match r.message.as_ref()? {
                    C::Template(t) => {
                        let mut t = t.clone();
                        t.touser = to.to_owned();
                        for (k, v) in data {
                            t.data.entry(k.clone()).or_default().value = v.clone();
                        }
                        Message::Template(t)
                    }
                    C::Subscribe(s) | C::Bizsend(s) => {
                        let mut s = s.clone();
                        s.touser = to.to_owned();
                        s.data
                            .extend(data.iter().map(|(k, v)| (k.clone(), v.clone())));
                        match r.message.as_ref()? {
                            C::Subscribe(_) => Message::Subscribe(s),
                            _ => Message::Bizsend(s),
                        }
                    }
                })
            };
        let empty = std::collections::HashMap::new();
        let Prepared {
            kind, api, body, ..
        } = validate::prepare(as_message(&r.recipients[0].touser, &empty).as_ref()).map_err(
            |s| {
                if r.message.is_none() {
                    Status::invalid_argument("message is required: template, subscribe or bizsend")
                } else {
                    s
                }
            },
        )?;
        let mut recipients = Vec::with_capacity(r.recipients.len());
        for (i, rc) in r.recipients.iter().enumerate() {
            validate::check_openid(&format!("recipients[{i}].touser"), &rc.touser)?;
            if !rc.data.is_empty() {
                validate::prepare(as_message(&rc.touser, &rc.data).as_ref()).map_err(|s| {
                    Status::invalid_argument(format!("recipients[{i}]: {}", s.message()))
                })?;
            }
            recipients.push(CampaignRecipient {
                touser: rc.touser.clone(),
                data: rc
                    .data
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            });
        }
        let appid = Self::account(&tenant, &r.appid)?;
        self.authorized(&tenant, &appid).await?;
        let now = wxhub_runtime::unix_ms();
        let id = new_id(tenant.id.as_str(), now);
        let campaign = NewCampaign {
            id: id.clone(),
            appid,
            kind: kind.to_owned(),
            api: api.to_owned(),
            body: serde_json::Value::Object(body).to_string(),
            recipients,
            now_ms: now,
        };
        self.campaigns
            .create(tenant.id.as_str(), &campaign)
            .await
            .map_err(|e| unavailable("cannot store the campaign", e))?;
        metrics::counter!("wxhub_messaging_campaigns_total").increment(1);
        self.campaign(tenant.id.as_str(), &id).await
    }

    async fn campaign(&self, tenant: &str, id: &str) -> Result<pb::Campaign, Status> {
        self.campaigns
            .get(tenant, id)
            .await
            .map_err(|e| unavailable("cannot read the campaign", e))?
            .map(|c| campaign_reply(&c))
            .ok_or_else(|| Status::not_found(format!("unknown campaign {id:?}")))
    }

    async fn change_campaign(
        &self,
        rpc: &'static str,
        req: Request<pb::CampaignRequest>,
        to: &str,
        from: &[&str],
    ) -> Result<pb::Campaign, Status> {
        let id = req.get_ref().campaign_id.clone();
        let tenant = self.job_tenant(rpc, &req, &id)?;
        match self
            .campaigns
            .set_state(tenant, &id, to, from)
            .await
            .map_err(|e| unavailable("cannot change the campaign", e))?
        {
            StateChange::Ok => {}
            StateChange::Missing => {
                return Err(Status::not_found(format!("unknown campaign {id:?}")));
            }
            StateChange::From(state) => {
                return Err(Status::failed_precondition(format!(
                    "campaign {id:?} is {state}"
                )));
            }
        }
        self.campaign(tenant, &id).await
    }

    fn limit(n: u32) -> usize {
        match n {
            0 => 100,
            n => usize::try_from(n.min(1000)).unwrap_or(1000),
        }
    }
}

/// Most messages in one EnqueueBatch call (about 1 KB each at most: well inside gRPC's 4 MB).
pub const ENQUEUE_BATCH_MAX: usize = 500;

fn batch_reply(results: Vec<Result<pb::Job, Status>>) -> pb::EnqueueBatchResponse {
    pb::EnqueueBatchResponse {
        results: results
            .into_iter()
            .enumerate()
            .map(|(i, r)| match r {
                Ok(job) => pb::EnqueueResult {
                    job: Some(job),
                    code: 0,
                    error: String::new(),
                },
                Err(s) => pb::EnqueueResult {
                    job: None,
                    code: s.code() as i32,
                    error: format!("messages[{i}]: {}", s.message()),
                },
            })
            .collect(),
    }
}

/// The protobuf view of a campaign.
pub fn campaign_reply(c: &CampaignRecord) -> pb::Campaign {
    pb::Campaign {
        id: c.id.clone(),
        tenant: c.tenant.clone(),
        appid: c.appid.clone(),
        kind: c.kind.clone(),
        state: c.state.clone(),
        total: c.total,
        fed: c.fed,
        queued: c.in_flight(),
        sent: c.sent,
        failed: c.failed,
        unknown: c.unknown,
        dead: c.dead,
        cancelled: c.cancelled,
        remaining: c.total.saturating_sub(c.fed),
        created_at_ms: c.created_at_ms,
    }
}

#[tonic::async_trait]
impl Messaging for MessagingService {
    async fn create_campaign(
        &self,
        req: Request<pb::CreateCampaignRequest>,
    ) -> Result<Response<pb::Campaign>, Status> {
        MessagingService::create_campaign(self, req)
            .await
            .map(Response::new)
    }

    async fn get_campaign(
        &self,
        req: Request<pb::CampaignRequest>,
    ) -> Result<Response<pb::Campaign>, Status> {
        let id = req.get_ref().campaign_id.clone();
        let tenant = self.job_tenant("GetCampaign", &req, &id)?;
        self.campaign(tenant, &id).await.map(Response::new)
    }

    async fn pause_campaign(
        &self,
        req: Request<pb::CampaignRequest>,
    ) -> Result<Response<pb::Campaign>, Status> {
        self.change_campaign("PauseCampaign", req, "paused", &["running"])
            .await
            .map(Response::new)
    }

    async fn resume_campaign(
        &self,
        req: Request<pb::CampaignRequest>,
    ) -> Result<Response<pb::Campaign>, Status> {
        self.change_campaign("ResumeCampaign", req, "running", &["paused"])
            .await
            .map(Response::new)
    }

    async fn cancel_campaign(
        &self,
        req: Request<pb::CampaignRequest>,
    ) -> Result<Response<pb::Campaign>, Status> {
        self.change_campaign("CancelCampaign", req, "cancelled", &["running", "paused"])
            .await
            .map(Response::new)
    }

    async fn enqueue(&self, req: Request<pb::EnqueueRequest>) -> Result<Response<pb::Job>, Status> {
        MessagingService::enqueue(self, req)
            .await
            .map(Response::new)
    }

    async fn enqueue_batch(
        &self,
        req: Request<pb::EnqueueBatchRequest>,
    ) -> Result<Response<pb::EnqueueBatchResponse>, Status> {
        MessagingService::enqueue_batch(self, req)
            .await
            .map(Response::new)
    }

    async fn get_job(&self, req: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        let id = req.get_ref().job_id.clone();
        let tenant = self.job_tenant("GetJob", &req, &id)?;
        self.get(tenant, &id).await.map(Response::new)
    }

    async fn list_jobs(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let tenant = self.admit("ListJobs", &req, &req.get_ref().tenant)?;
        let r = req.get_ref();
        let state = match r.state.as_str() {
            "" => None,
            s => Some(JobState::parse(s).ok_or_else(|| {
                Status::invalid_argument(
                    "state must be one of queued, sending, retrying, sent, delivered, delivery_failed, failed, unknown, dead, cancelled",
                )
            })?),
        };
        let jobs = self
            .jobs
            .list(tenant.id.as_str(), state, Self::limit(r.limit))
            .await
            .map_err(|e| unavailable("cannot list jobs", e))?;
        Ok(Response::new(pb::ListJobsResponse {
            jobs: jobs.iter().map(job_reply).collect(),
        }))
    }

    async fn list_dead(
        &self,
        req: Request<pb::ListDeadRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let tenant = self.admit("ListDead", &req, &req.get_ref().tenant)?;
        let limit = Self::limit(req.get_ref().limit);
        let mut jobs = Vec::new();
        for state in [JobState::Dead, JobState::Unknown] {
            jobs.extend(
                self.jobs
                    .list(tenant.id.as_str(), Some(state), limit)
                    .await
                    .map_err(|e| unavailable("cannot list jobs", e))?,
            );
        }
        jobs.sort_by_key(|j| std::cmp::Reverse(j.updated_at_ms));
        jobs.truncate(limit);
        Ok(Response::new(pb::ListJobsResponse {
            jobs: jobs.iter().map(job_reply).collect(),
        }))
    }

    async fn replay_dead(
        &self,
        req: Request<pb::ReplayDeadRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let id = req.get_ref().job_id.clone();
        let tenant = self.job_tenant("ReplayDead", &req, &id)?;
        match self
            .jobs
            .replay(tenant, &id, wxhub_runtime::unix_ms())
            .await
            .map_err(|e| unavailable("cannot replay the job", e))?
        {
            None => {}
            Some(None) => return Err(Status::not_found(format!("unknown job {id:?}"))),
            Some(Some(state)) => {
                return Err(Status::failed_precondition(format!(
                    "job {id:?} is {}: only dead, unknown or queued jobs are replayed",
                    state.as_str()
                )));
            }
        }
        // A queued job may be announced twice (a replay after a failed publish): the claim
        // lets only one of them send.
        tokio::time::timeout(
            self.timeout,
            publish_job(self.announcer.bus(), tenant, &id, None),
        )
        .await
        .map_err(|_| unavailable("cannot publish the job", "no confirm in time"))?
        .map_err(|e| unavailable("cannot publish the job (it stays queued; replay again)", e))?;
        metrics::counter!("wxhub_messaging_replayed_total").increment(1);
        self.get(tenant, &id).await.map(Response::new)
    }
}
