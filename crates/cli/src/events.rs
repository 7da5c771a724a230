//! `wxhub events peek QUEUE`: look at what waits in a queue — the unrouted events, the dead
//! letters with their reasons — without consuming it. Messages are read unacknowledged and put
//! back (`nack` with requeue), so nothing is lost; their `redelivered` flag is set afterwards.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use lapin::options::{BasicGetOptions, BasicNackOptions};
use lapin::types::AMQPValue;
use prost::Message as _;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;
use wxhub_bus::{AmqpConfig, Bus, Topology};
use wxhub_proto::events::v1::CallbackEvent;
use wxhub_proto::jobs::v1::ReleaseCheckJob;
use wxhub_runtime::config::{ConfigError, Source, validate_identifier};

use crate::CliError;

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Print up to --count messages of a queue as JSON lines, leaving them in the queue.
    Peek(PeekArgs),
}

#[derive(Debug, Args)]
pub struct PeekArgs {
    /// Queue: a full name, or a short one of the namespace (`unrouted`, `dead`, `token-control`,
    /// `release-check`).
    queue: String,
    /// At most this many messages.
    #[arg(long, default_value_t = 20)]
    count: usize,
    /// Config file (else WXHUB_CONFIG); WXHUB_AMQP__URL and WXHUB_NAMESPACE override it.
    #[arg(long)]
    config: Option<PathBuf>,
}

/// What `events` reads: the namespace and `[amqp]`.
#[derive(Debug, Deserialize)]
pub(crate) struct EventsConfig {
    pub(crate) namespace: String,
    #[serde(default)]
    amqp: AmqpConfig,
}

impl EventsConfig {
    pub(crate) fn load(source: &Source) -> Result<Self, ConfigError> {
        let config: Self = wxhub_runtime::config::load("", source)?;
        validate_identifier("namespace", &config.namespace)?;
        config.amqp.validate()?;
        Ok(config)
    }
}

pub fn run(cmd: EventsCommand) -> Result<String, CliError> {
    match cmd {
        EventsCommand::Peek(args) => crate::token::block_on(peek(args)),
    }
}

async fn peek(args: PeekArgs) -> Result<String, CliError> {
    let config =
        EventsConfig::load(&Source::from_process(args.config.clone())).map_err(CliError::new)?;
    let topology = Topology::new(config.namespace.clone(), config.amqp.delivery_limit);
    let queue = if args.queue.contains('.') {
        args.queue.clone()
    } else {
        format!("{}.{}", config.namespace, args.queue)
    };
    let cancel = CancellationToken::new();
    let bus = Bus::start(config.amqp, topology, "wxhub-cli", cancel.clone());
    if !bus.wait_connected(Duration::from_secs(10)).await {
        return Err(CliError::new("cannot connect to RabbitMQ (amqp.url)"));
    }
    let channel = bus.channel().await.map_err(CliError::new)?;
    let mut out = String::new();
    let mut last_tag = None;
    for _ in 0..args.count {
        let got = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(|e| CliError::new(format_args!("queue {queue}: {e}")))?;
        let Some(message) = got else { break };
        last_tag = Some(message.delivery.delivery_tag);
        out.push_str(&describe(&queue, &message.delivery).to_string());
        out.push('\n');
    }
    if let Some(tag) = last_tag {
        // Put every peeked message back, in one go.
        let options = BasicNackOptions {
            multiple: true,
            requeue: true,
        };
        channel
            .basic_nack(tag, options)
            .await
            .map_err(CliError::new)?;
    }
    bus.close().await;
    Ok(out)
}

fn describe(queue: &str, d: &lapin::message::Delivery) -> Value {
    let p = &d.properties;
    let mut headers = Map::new();
    if let Some(table) = p.headers() {
        for (k, v) in table.inner() {
            let v = match v {
                AMQPValue::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
                AMQPValue::ShortString(s) => json!(s.as_str()),
                AMQPValue::LongLongInt(n) => json!(n),
                AMQPValue::LongInt(n) => json!(n),
                other => json!(format!("{other:?}")),
            };
            headers.insert(k.to_string(), v);
        }
    }
    let kind = p
        .kind()
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    let body = match kind.as_str() {
        "wxhub.events.v1.CallbackEvent" => CallbackEvent::decode(d.data.as_slice())
            .map(|e| {
                json!({
                    "tenant": e.tenant, "tenant_kind": e.tenant_kind, "appid": e.appid,
                    "kind": e.kind, "dedupe_key": e.dedupe_key, "received_at_ms": e.received_at_ms,
                    "encrypt_mode": e.encrypt_mode, "from_user_name": e.from_user_name,
                    "msg_type": e.msg_type, "event": e.event, "info_type": e.info_type,
                    "xml": e.xml,
                })
            })
            .unwrap_or_else(|e| json!({"undecodable": e.to_string()})),
        "wxhub.jobs.v1.ReleaseCheckJob" => ReleaseCheckJob::decode(d.data.as_slice())
            .map(|j| {
                json!({"tenant": j.tenant, "authorizer_appid": j.authorizer_appid, "open_id": j.open_id})
            })
            .unwrap_or_else(|e| json!({"undecodable": e.to_string()})),
        _ => json!({"bytes": d.data.len()}),
    };
    json!({
        "queue": queue,
        "routing_key": d.routing_key.as_str(),
        "message_id": p.message_id().as_ref().map(ToString::to_string),
        "type": kind,
        "redelivered": d.redelivered,
        "headers": headers,
        "body": body,
    })
}
