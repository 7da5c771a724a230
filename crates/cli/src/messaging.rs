//! `wxhub send|job|jobs|dead`: the messaging service's gRPC API (`wxhub.messaging.v1`, served
//! by the worker) for operators and scripts.
//!
//! The endpoint is `messaging.endpoint` (default `http://127.0.0.1:50052`), the API key
//! `client.api_key`, from the same layers as every binary. Output is one JSON document on
//! stdout; failures are one line on stderr and exit status 2.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use wxhub_proto::messaging::v1 as pb;
use wxhub_proto::messaging::v1::enqueue_request::Message;
use wxhub_proto::messaging::v1::messaging_client::MessagingClient;
use wxhub_runtime::config::{ConfigError, Source, at_least, http_url};
use wxhub_token_client::ClientConfig;

use crate::CliError;
use crate::token::block_on;

const DEFAULTS: &str = r#"
[messaging]
# Where the worker serves wxhub.messaging.v1.Messaging (its worker.listen).
endpoint = "http://127.0.0.1:50052"

[cli]
public_url = ""
timeout_ms = 30000
"#;

/// `[messaging]` as a client reads it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagingEndpoint {
    pub endpoint: String,
}

#[derive(Debug, Deserialize)]
struct Config {
    messaging: MessagingEndpoint,
    #[serde(default)]
    client: ClientConfig,
    cli: Cli,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Cli {
    #[allow(dead_code)]
    public_url: String,
    timeout_ms: u64,
}

impl Config {
    fn load(source: &Source) -> Result<Self, ConfigError> {
        let config: Self = wxhub_runtime::config::load(DEFAULTS, source)?;
        http_url("messaging.endpoint", &config.messaging.endpoint)?;
        at_least("cli.timeout_ms", config.cli.timeout_ms, 1, "")?;
        Ok(config)
    }
}

/// Where the configuration comes from.
#[derive(Debug, Args)]
pub struct Common {
    /// Config file (else WXHUB_CONFIG); WXHUB_MESSAGING__ENDPOINT and WXHUB_CLIENT__API_KEY
    /// override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
}

/// What every send takes.
#[derive(Debug, Args)]
pub struct SendArgs {
    tenant: String,
    /// The authorizer appid; `-` for the tenant's own account.
    appid: String,
    /// The same key within 24 h returns the first job and sends nothing.
    #[arg(long)]
    idempotency_key: Option<String>,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Subcommand)]
pub enum SendCommand {
    /// A customer-service message: --text, or --json with WeChat's body
    /// ({"msgtype":"image","image":{"media_id":"…"}}, optional "customservice").
    Custom {
        #[command(flatten)]
        args: SendArgs,
        /// The recipient's OpenID.
        #[arg(long)]
        to: String,
        #[arg(long, conflicts_with = "json", required_unless_present = "json")]
        text: Option<String>,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// A template message: --json with WeChat's body (touser, template_id, data, url,
    /// miniprogram, client_msg_id).
    Template {
        #[command(flatten)]
        args: SendArgs,
        #[arg(long)]
        json: PathBuf,
    },
    /// A mini-program subscribe message: --json with WeChat's body (touser, template_id,
    /// page, data, miniprogram_state, lang).
    Subscribe {
        #[command(flatten)]
        args: SendArgs,
        #[arg(long)]
        json: PathBuf,
    },
    /// An Official Account subscription notice (bizsend): --json like subscribe.
    Bizsend {
        #[command(flatten)]
        args: SendArgs,
        #[arg(long)]
        json: PathBuf,
    },
    /// Up to 500 messages of one tenant in one call (EnqueueBatch): --json with an array of
    /// WeChat's bodies, each with "type" (custom, template, subscribe or bizsend), "appid"
    /// (`-` or absent: the tenant's own account) and an optional "idempotency_key". Prints
    /// each message's job or error, in order; exits 0 once the call is answered.
    Batch {
        tenant: String,
        #[arg(long)]
        json: PathBuf,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Debug, Args)]
pub struct JobArgs {
    job_id: String,
    /// Wait up to this many seconds for a final state (sent counts as final unless a
    /// delivery report is expected: then delivered or delivery_failed).
    #[arg(long)]
    wait: Option<u64>,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
pub struct JobsArgs {
    tenant: String,
    /// queued, sending, retrying, sent, delivered, delivery_failed, failed, unknown, dead, cancelled.
    #[arg(long)]
    state: Option<String>,
    #[arg(long, default_value_t = 100)]
    limit: u32,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Subcommand)]
pub enum DeadCommand {
    /// Dead jobs and jobs whose outcome is unknown, newest first.
    List {
        tenant: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        common: Common,
    },
    /// Queue a dead or unknown job again (an unknown one may then reach the user twice).
    Replay {
        job_id: String,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Debug, Subcommand)]
pub enum CampaignCommand {
    /// Create a campaign: --json with WeChat's template (or subscribe/bizsend) body without
    /// touser, --recipients with one recipient a line: an OpenID, or a JSON object
    /// {"touser": …, "data": {keyword: value}} with that recipient's overrides.
    Create {
        tenant: String,
        appid: String,
        /// template (default), subscribe or bizsend.
        #[arg(long, default_value = "template")]
        kind: String,
        #[arg(long)]
        json: PathBuf,
        #[arg(long)]
        recipients: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// The campaign with its counters.
    Get {
        campaign_id: String,
        #[command(flatten)]
        common: Common,
    },
    /// Stop feeding (jobs already fed still go out).
    Pause {
        campaign_id: String,
        #[command(flatten)]
        common: Common,
    },
    Resume {
        campaign_id: String,
        #[command(flatten)]
        common: Common,
    },
    /// Stop feeding for good.
    Cancel {
        campaign_id: String,
        #[command(flatten)]
        common: Common,
    },
}

fn campaign_json(c: &pb::Campaign) -> Value {
    json!({
        "campaign_id": c.id,
        "tenant": c.tenant,
        "appid": c.appid,
        "kind": c.kind,
        "state": c.state,
        "total": c.total,
        "fed": c.fed,
        "queued": c.queued,
        "sent": c.sent,
        "failed": c.failed,
        "unknown": c.unknown,
        "dead": c.dead,
        "cancelled": c.cancelled,
        "remaining": c.remaining,
        "created_at_ms": c.created_at_ms,
    })
}

fn read_recipients(path: &PathBuf) -> Result<Vec<pb::Recipient>, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::new(format_args!("cannot read {}: {e}", path.display())))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('{') {
            let v: Map<String, Value> = serde_json::from_str(line).map_err(|e| {
                CliError::new(format_args!("{} line {}: {e}", path.display(), i + 1))
            })?;
            let data = v
                .get("data")
                .and_then(Value::as_object)
                .map(|d| {
                    d.iter()
                        .map(|(k, v)| {
                            let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                            (k.clone(), v)
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(pb::Recipient {
                touser: str_of(&v, "touser"),
                data,
            });
        } else {
            out.push(pb::Recipient {
                touser: line.to_owned(),
                data: Default::default(),
            });
        }
    }
    Ok(out)
}

pub fn run_campaign(cmd: CampaignCommand) -> Result<String, CliError> {
    use pb::create_campaign_request::Message as C;
    block_on(async move {
        let (common, rpc, id) = match cmd {
            CampaignCommand::Create {
                tenant,
                appid,
                kind,
                json,
                recipients,
                common,
            } => {
                let m = read_json(&json)?;
                let message = match kind.as_str() {
                    "template" => C::Template(pb::TemplateMessage {
                        touser: String::new(),
                        template_id: str_of(&m, "template_id"),
                        url: str_of(&m, "url"),
                        miniprogram: link(&m),
                        data: template_data(&m),
                        client_msg_id: String::new(),
                    }),
                    "subscribe" => C::Subscribe(subscribe_message(&m)),
                    "bizsend" => C::Bizsend(subscribe_message(&m)),
                    other => {
                        return Err(CliError::new(format_args!(
                            "--kind {other:?}: template, subscribe or bizsend"
                        )));
                    }
                };
                let c = Conn::open(&common)?;
                let r = c
                    .grpc
                    .clone()
                    .create_campaign(c.request(pb::CreateCampaignRequest {
                        tenant,
                        appid: if appid == "-" { String::new() } else { appid },
                        message: Some(message),
                        recipients: read_recipients(&recipients)?,
                    }))
                    .await
                    .map_err(status)?
                    .into_inner();
                return render(&campaign_json(&r));
            }
            CampaignCommand::Get {
                campaign_id,
                common,
            } => (common, "get", campaign_id),
            CampaignCommand::Pause {
                campaign_id,
                common,
            } => (common, "pause", campaign_id),
            CampaignCommand::Resume {
                campaign_id,
                common,
            } => (common, "resume", campaign_id),
            CampaignCommand::Cancel {
                campaign_id,
                common,
            } => (common, "cancel", campaign_id),
        };
        let c = Conn::open(&common)?;
        let mut grpc = c.grpc.clone();
        let request = c.request(pb::CampaignRequest { campaign_id: id });
        let r = match rpc {
            "get" => grpc.get_campaign(request).await,
            "pause" => grpc.pause_campaign(request).await,
            "resume" => grpc.resume_campaign(request).await,
            _ => grpc.cancel_campaign(request).await,
        }
        .map_err(status)?
        .into_inner();
        render(&campaign_json(&r))
    })
}

struct Conn {
    grpc: MessagingClient<Channel>,
    authorization: MetadataValue<Ascii>,
    timeout: Duration,
}

impl Conn {
    fn open(common: &Common) -> Result<Self, CliError> {
        let config =
            Config::load(&Source::from_process(common.config.clone())).map_err(CliError::new)?;
        if config.client.api_key.is_empty() {
            return Err(CliError::new(
                "client.api_key is not set (config file or WXHUB_CLIENT__API_KEY)",
            ));
        }
        let authorization = format!("Bearer {}", config.client.api_key.expose())
            .parse()
            .map_err(|_| CliError::new("client.api_key is not a valid header value"))?;
        let timeout = Duration::from_millis(config.cli.timeout_ms);
        let channel = Endpoint::from_shared(config.messaging.endpoint.clone())
            .map_err(|e| CliError::new(format_args!("messaging.endpoint: {e}")))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(timeout)
            .connect_lazy();
        Ok(Self {
            grpc: MessagingClient::new(channel),
            authorization,
            timeout,
        })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        r.set_timeout(self.timeout);
        r.metadata_mut()
            .insert("authorization", self.authorization.clone());
        r
    }
}

fn status(e: tonic::Status) -> CliError {
    CliError::new(format_args!("messaging: {:?}: {}", e.code(), e.message()))
}

fn render(v: &Value) -> Result<String, CliError> {
    serde_json::to_string_pretty(v)
        .map(|s| s + "\n")
        .map_err(CliError::new)
}

fn job_json(j: &pb::Job) -> Value {
    json!({
        "job_id": j.id,
        "tenant": j.tenant,
        "appid": j.appid,
        "kind": j.kind,
        "touser": j.touser,
        "state": j.state_name,
        "attempts_made": j.attempts_made,
        "next_attempt_at_ms": j.next_attempt_at_ms,
        "errcode": j.errcode,
        "reason": j.reason,
        "msgid": j.msgid,
        "delivery_status": j.delivery_status,
        "idempotency_key": j.idempotency_key,
        "created_at_ms": j.created_at_ms,
        "updated_at_ms": j.updated_at_ms,
        "attempts": j.attempts.iter().map(|a| json!({
            "at_ms": a.at_ms, "errcode": a.errcode, "errmsg": a.errmsg,
        })).collect::<Vec<_>>(),
    })
}

fn read_text(path: &PathBuf) -> Result<String, CliError> {
    std::fs::read_to_string(path)
        .map_err(|e| CliError::new(format_args!("cannot read {}: {e}", path.display())))
}

fn read_json(path: &PathBuf) -> Result<Map<String, Value>, CliError> {
    let text = read_text(path)?;
    match serde_json::from_str(&text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(CliError::new(format_args!(
            "{}: must be a JSON object",
            path.display()
        ))),
        Err(e) => Err(CliError::new(format_args!("{}: {e}", path.display()))),
    }
}

fn str_of(m: &Map<String, Value>, k: &str) -> String {
    m.get(k)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn link(m: &Map<String, Value>) -> Option<pb::MiniProgramLink> {
    m.get("miniprogram")
        .and_then(Value::as_object)
        .map(|mp| pb::MiniProgramLink {
            appid: str_of(mp, "appid"),
            pagepath: str_of(mp, "pagepath"),
        })
}

/// `data` of a template: {"k": {"value": "…", "color": "…"}} (or {"k": "…"}).
fn template_data(m: &Map<String, Value>) -> std::collections::HashMap<String, pb::TemplateValue> {
    let Some(data) = m.get("data").and_then(Value::as_object) else {
        return Default::default();
    };
    data.iter()
        .map(|(k, v)| {
            let value = match v {
                Value::Object(o) => pb::TemplateValue {
                    value: match o.get("value") {
                        Some(Value::String(s)) => s.clone(),
                        Some(other) => other.to_string(),
                        None => String::new(),
                    },
                    color: str_of(o, "color"),
                },
                Value::String(s) => pb::TemplateValue {
                    value: s.clone(),
                    color: String::new(),
                },
                other => pb::TemplateValue {
                    value: other.to_string(),
                    color: String::new(),
                },
            };
            (k.clone(), value)
        })
        .collect()
}

fn subscribe_message(m: &Map<String, Value>) -> pb::SubscribeMessage {
    let data = template_data(m)
        .into_iter()
        .map(|(k, v)| (k, v.value))
        .collect();
    pb::SubscribeMessage {
        touser: str_of(m, "touser"),
        template_id: str_of(m, "template_id"),
        page: str_of(m, "page"),
        data,
        miniprogram_state: str_of(m, "miniprogram_state"),
        lang: str_of(m, "lang"),
        miniprogram: link(m),
    }
}

/// A customer-service message from WeChat's body (msgtype, the msgtype's object, optional
/// customservice) to `to`.
fn custom_message(to: String, m: &Map<String, Value>) -> Message {
    let msgtype = str_of(m, "msgtype");
    let body = m.get(&msgtype).cloned().unwrap_or(Value::Null);
    let kf_account = m
        .get("customservice")
        .and_then(Value::as_object)
        .map(|c| str_of(c, "kf_account"))
        .unwrap_or_default();
    Message::Custom(pb::CustomMessage {
        touser: to,
        msgtype,
        body_json: body.to_string(),
        kf_account,
    })
}

fn template_message(m: &Map<String, Value>) -> Message {
    Message::Template(pb::TemplateMessage {
        touser: str_of(m, "touser"),
        template_id: str_of(m, "template_id"),
        url: str_of(m, "url"),
        miniprogram: link(m),
        data: template_data(m),
        client_msg_id: str_of(m, "client_msg_id"),
    })
}

/// The message a send command names.
fn message(cmd: &SendCommand) -> Result<Message, CliError> {
    Ok(match cmd {
        SendCommand::Custom { to, text, json, .. } => match (text, json) {
            (Some(t), _) => Message::Custom(pb::CustomMessage {
                touser: to.clone(),
                msgtype: "text".to_owned(),
                body_json: json!({ "content": t }).to_string(),
                kf_account: String::new(),
            }),
            (None, Some(path)) => custom_message(to.clone(), &read_json(path)?),
            (None, None) => return Err(CliError::new("--text or --json is required")),
        },
        SendCommand::Template { json, .. } => template_message(&read_json(json)?),
        SendCommand::Subscribe { json, .. } => {
            Message::Subscribe(subscribe_message(&read_json(json)?))
        }
        SendCommand::Bizsend { json, .. } => Message::Bizsend(subscribe_message(&read_json(json)?)),
        SendCommand::Batch { .. } => return Err(CliError::new("a batch is many messages")),
    })
}

/// The account a send names: "" for the tenant's own (`-`).
fn account(appid: &str) -> String {
    if appid == "-" {
        String::new()
    } else {
        appid.to_owned()
    }
}

/// EnqueueBatch's messages from a JSON array of WeChat's bodies (see `SendCommand::Batch`).
fn batch_messages(path: &PathBuf) -> Result<Vec<pb::EnqueueRequest>, CliError> {
    let text = read_text(path)?;
    let items: Vec<Map<String, Value>> = serde_json::from_str(&text).map_err(|e| {
        CliError::new(format_args!(
            "{}: must be a JSON array of objects: {e}",
            path.display()
        ))
    })?;
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let message = match str_of(m, "type").as_str() {
                "custom" => custom_message(str_of(m, "touser"), m),
                "template" => template_message(m),
                "subscribe" => Message::Subscribe(subscribe_message(m)),
                "bizsend" => Message::Bizsend(subscribe_message(m)),
                other => {
                    return Err(CliError::new(format_args!(
                        "{}: [{i}].type must be custom, template, subscribe or bizsend (got {other:?})",
                        path.display()
                    )));
                }
            };
            Ok(pb::EnqueueRequest {
                tenant: String::new(),
                appid: account(&str_of(m, "appid")),
                idempotency_key: str_of(m, "idempotency_key"),
                message: Some(message),
            })
        })
        .collect()
}

fn run_batch(tenant: &str, json: &PathBuf, common: &Common) -> Result<String, CliError> {
    let messages = batch_messages(json)?;
    block_on(async move {
        let c = Conn::open(common)?;
        let results = c
            .grpc
            .clone()
            .enqueue_batch(c.request(pb::EnqueueBatchRequest {
                tenant: tenant.to_owned(),
                messages,
            }))
            .await
            .map_err(status)?
            .into_inner()
            .results;
        let results: Vec<Value> = results
            .iter()
            .map(|r| match &r.job {
                Some(j) if r.code == 0 => json!({ "job_id": j.id, "state": j.state_name }),
                _ => json!({
                    "error": format!("{:?}: {}", tonic::Code::from_i32(r.code), r.error)
                }),
            })
            .collect();
        render(&json!({ "results": results }))
    })
}

pub fn run_send(cmd: SendCommand) -> Result<String, CliError> {
    let args = match &cmd {
        SendCommand::Custom { args, .. }
        | SendCommand::Template { args, .. }
        | SendCommand::Subscribe { args, .. }
        | SendCommand::Bizsend { args, .. } => args,
        SendCommand::Batch {
            tenant,
            json,
            common,
        } => return run_batch(tenant, json, common),
    };
    let message = message(&cmd)?;
    block_on(async move {
        let c = Conn::open(&args.common)?;
        let appid = account(&args.appid);
        let j = c
            .grpc
            .clone()
            .enqueue(c.request(pb::EnqueueRequest {
                tenant: args.tenant.clone(),
                appid,
                idempotency_key: args.idempotency_key.clone().unwrap_or_default(),
                message: Some(message),
            }))
            .await
            .map_err(status)?
            .into_inner();
        render(&json!({ "job_id": j.id, "state": j.state_name }))
    })
}

/// A state after which nothing changes by itself (`sent` may still get a delivery report for
/// templates and subscribe messages).
fn settled(j: &pb::Job) -> bool {
    match j.state_name.as_str() {
        "queued" | "sending" | "retrying" => false,
        "sent" => j.kind == "custom",
        _ => true,
    }
}

pub fn run_job(a: JobArgs) -> Result<String, CliError> {
    block_on(async move {
        let c = Conn::open(&a.common)?;
        let deadline = a.wait.map(|s| Instant::now() + Duration::from_secs(s));
        loop {
            let j = c
                .grpc
                .clone()
                .get_job(c.request(pb::GetJobRequest {
                    job_id: a.job_id.clone(),
                }))
                .await
                .map_err(status)?
                .into_inner();
            match deadline {
                Some(at) if !settled(&j) && Instant::now() < at => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                _ => return render(&job_json(&j)),
            }
        }
    })
}

pub fn run_jobs(a: JobsArgs) -> Result<String, CliError> {
    block_on(async move {
        let c = Conn::open(&a.common)?;
        let r = c
            .grpc
            .clone()
            .list_jobs(c.request(pb::ListJobsRequest {
                tenant: a.tenant,
                state: a.state.unwrap_or_default(),
                limit: a.limit,
            }))
            .await
            .map_err(status)?
            .into_inner();
        render(&json!({ "jobs": r.jobs.iter().map(job_json).collect::<Vec<_>>() }))
    })
}

pub fn run_dead(cmd: DeadCommand) -> Result<String, CliError> {
    block_on(async move {
        match cmd {
            DeadCommand::List {
                tenant,
                limit,
                common,
            } => {
                let c = Conn::open(&common)?;
                let r = c
                    .grpc
                    .clone()
                    .list_dead(c.request(pb::ListDeadRequest { tenant, limit }))
                    .await
                    .map_err(status)?
                    .into_inner();
                render(&json!({ "jobs": r.jobs.iter().map(job_json).collect::<Vec<_>>() }))
            }
            DeadCommand::Replay { job_id, common } => {
                let c = Conn::open(&common)?;
                let j = c
                    .grpc
                    .clone()
                    .replay_dead(c.request(pb::ReplayDeadRequest { job_id }))
                    .await
                    .map_err(status)?
                    .into_inner();
                render(&job_json(&j))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_json_bodies_become_messages() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.json");
        std::fs::write(
            &file,
            r#"{"msgtype":"image","image":{"media_id":"m1"},"customservice":{"kf_account":"a@b"}}"#,
        )
        .unwrap();
        let cmd = SendCommand::Custom {
            args: SendArgs {
                tenant: "acme".into(),
                appid: "-".into(),
                idempotency_key: None,
                common: Common { config: None },
            },
            to: "o1".into(),
            text: None,
            json: Some(file),
        };
        let Message::Custom(m) = message(&cmd).unwrap() else {
            panic!("not custom")
        };
        assert_eq!(
            (m.msgtype.as_str(), m.kf_account.as_str()),
            ("image", "a@b")
        );
        assert_eq!(m.body_json, r#"{"media_id":"m1"}"#);
    }

    #[test]
    fn the_endpoint_defaults_and_is_checked() {
        let c = Config::load(&Source::default()).unwrap();
        assert_eq!(c.messaging.endpoint, "http://127.0.0.1:50052");
        let bad = Source {
            file: None,
            env: vec![("WXHUB_MESSAGING__ENDPOINT".into(), "nope".into())],
        };
        assert!(
            Config::load(&bad)
                .unwrap_err()
                .to_string()
                .contains("messaging.endpoint")
        );
    }
}
