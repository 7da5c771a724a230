//! The gRPC service `wxhub.messaging.v1.Messaging`.
//!
//! Every call is admitted like token-control's (`wxhub_runtime::grpc::admit`: API key, tenant
//! id, the client's tenants). Enqueue then checks the message (`validate`), the account (known
//! and authorized), stores the job, publishes it with the broker's confirm, and only then
//! answers with its id; a failed publish removes the job again (UNAVAILABLE, nothing queued).

use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use tonic::{Request, Response, Status};
use wxhub_bus::topology::SEND_KEY;
use wxhub_bus::{Bus, Outgoing};
use wxhub_proto::jobs::v1::SendJob;
use wxhub_proto::messaging::v1 as pb;
use wxhub_proto::messaging::v1::messaging_server::Messaging;
use wxhub_runtime::{Tenant, TenantKind, TenantsHandle};
use wxhub_store::jobs::{new_id, tenant_of};
use wxhub_store::{AuthorizerStatus, Authorizers, Created, JobRecord, JobState, Jobs, NewJob};

use crate::validate::{self, Prepared};

/// AMQP `type` of [`SendJob`].
pub const SEND_JOB_TYPE: &str = "wxhub.jobs.v1.SendJob";

/// The messaging service.
#[derive(Clone)]
pub struct MessagingService {
    tenants: TenantsHandle,
    jobs: Jobs,
    authorizers: Authorizers,
    bus: Bus,
    timeout: Duration,
}

impl std::fmt::Debug for MessagingService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessagingService").finish_non_exhaustive()
    }
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

/// Publishes the job announcement (`send` routing key) with confirm.
pub async fn publish_job(bus: &Bus, tenant: &str, id: &str) -> Result<(), wxhub_bus::BusError> {
    let body = SendJob {
        tenant: tenant.to_owned(),
        job_id: id.to_owned(),
    }
    .encode_to_vec();
    let exchange = bus.topology().jobs_exchange();
    bus.publish(&Outgoing {
        exchange: &exchange,
        routing_key: SEND_KEY,
        body: &body,
        message_id: id,
        message_type: SEND_JOB_TYPE,
        headers: &[],
    })
    .await
}

impl MessagingService {
    pub fn new(
        tenants: TenantsHandle,
        jobs: Jobs,
        authorizers: Authorizers,
        bus: Bus,
        timeout: Duration,
    ) -> Self {
        Self {
            tenants,
            jobs,
            authorizers,
            bus,
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

    /// The account a request names: the authorizer appid (component tenants, known and not
    /// revoked) or "" for the tenant's own account.
    async fn account(&self, tenant: &Tenant, appid: &str) -> Result<String, Status> {
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
                let record = self
                    .authorizers
                    .get(tenant.id.as_str(), appid)
                    .await
                    .map_err(|e| unavailable("cannot read the authorizer", e))?
                    .ok_or_else(|| Status::not_found(format!("unknown authorizer {appid:?}")))?;
                if record.status == AuthorizerStatus::Revoked {
                    return Err(Status::failed_precondition(format!(
                        "authorizer {appid:?} revoked the authorization"
                    )));
                }
                Ok(appid.to_owned())
            }
        }
    }

    async fn enqueue(&self, req: Request<pb::EnqueueRequest>) -> Result<pb::Job, Status> {
        let tenant = self.admit("Enqueue", &req, &req.get_ref().tenant)?;
        let r = req.into_inner();
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
        let appid = self.account(&tenant, &r.appid).await?;
        let now = wxhub_runtime::unix_ms();
        let tenant_id = tenant.id.as_str();
        let id = new_id(tenant_id, now);
        if kind == "template" && !body.contains_key("client_msg_id") {
            // WeChat deduplicates (openid, client_msg_id): what makes a template resend after
            // an unknown outcome safe.
            body.insert(
                "client_msg_id".into(),
                serde_json::Value::String(id.clone()),
            );
        }
        let job = NewJob {
            id: id.clone(),
            appid,
            kind: kind.to_owned(),
            api: api.to_owned(),
            touser,
            body: serde_json::Value::Object(body).to_string(),
            idempotency_key: key.map(str::to_owned),
            now_ms: now,
        };
        match self
            .jobs
            .create(tenant_id, &job)
            .await
            .map_err(|e| unavailable("cannot store the job", e))?
        {
            Created::Existing(existing) => {
                metrics::counter!("wxhub_messaging_enqueued_total", "kind" => kind, "result" => "existing").increment(1);
                return self.get(tenant_id, &existing).await;
            }
            Created::New => {}
        }
        let published =
            tokio::time::timeout(self.timeout, publish_job(&self.bus, tenant_id, &id)).await;
        let failure = match published {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("the broker did not confirm in time".to_owned()),
        };
        if let Some(why) = failure {
            if let Err(e) = self.jobs.abandon(tenant_id, &id, key).await {
                tracing::warn!(job = id, error = %e, "cannot remove an unpublished job");
            }
            return Err(unavailable("cannot publish the job", why));
        }
        metrics::counter!("wxhub_messaging_enqueued_total", "kind" => kind, "result" => "new")
            .increment(1);
        self.get(tenant_id, &id).await
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

    fn limit(n: u32) -> usize {
        match n {
            0 => 100,
            n => usize::try_from(n.min(1000)).unwrap_or(1000),
        }
    }
}

#[tonic::async_trait]
impl Messaging for MessagingService {
    async fn enqueue(&self, req: Request<pb::EnqueueRequest>) -> Result<Response<pb::Job>, Status> {
        MessagingService::enqueue(self, req)
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
                    "state must be one of queued, sending, retrying, sent, delivered, delivery_failed, failed, unknown, dead",
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
        tokio::time::timeout(self.timeout, publish_job(&self.bus, tenant, &id))
            .await
            .map_err(|_| unavailable("cannot publish the job", "no confirm in time"))?
            .map_err(|e| {
                unavailable("cannot publish the job (it stays queued; replay again)", e)
            })?;
        metrics::counter!("wxhub_messaging_replayed_total").increment(1);
        self.get(tenant, &id).await.map(Response::new)
    }
}
