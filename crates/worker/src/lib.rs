//! The wxhub worker: consumes jobs from RabbitMQ and calls WeChat on the tenants' behalf, with
//! tokens from token-control.
//!
//! Today it runs the full-network release check's asynchronous step ([`release_check`]) so the
//! stack passes 全网发布 end to end; the messaging service of design §7 (customer-service,
//! template and subscribe sends with job status and rate limits) is a later issue and will
//! live here too.
//!
//! [`run`] takes its ops listener and a shutdown future, so tests start it in-process.

mod config;
pub mod release_check;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wxhub_bus::{Bus, Topology, consume};
use wxhub_runtime::ops::{self, Readiness};
use wxhub_store::{Ledger, Store};
use wxhub_token_client::TokenClient;
use wxhub_wechat_api::WechatApi;

pub use config::{Config, DEFAULTS, TokenControlEndpoint, WorkerSection};
pub use release_check::ReleaseCheck;

/// Runs the worker until `shutdown` resolves: consumers stop taking deliveries, in-flight jobs
/// finish (bounded by `shutdown.grace_ms`) and are acked, then the bus closes.
pub async fn run(
    config: Config,
    ops_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate()?;
    let _ = ops::prometheus();
    let cancel = CancellationToken::new();
    let grace = Duration::from_millis(config.shutdown.grace_ms.max(1));
    let store = Store::connect(&config.redis, &config.namespace).context("redis.url")?;
    let topology = Topology::new(config.namespace.clone(), config.amqp.delivery_limit);
    let queue = topology.release_check_queue();
    let bus = Bus::start(
        config.amqp.clone(),
        topology,
        "wxhub-worker",
        cancel.clone(),
    );
    let tokens = TokenClient::new(
        &config.token_control.endpoint,
        &config.client.api_key,
        Duration::from_millis(config.worker.token_timeout_ms.max(1)),
    )?;
    let wechat = WechatApi::new(&config.wechat).map_err(|e| anyhow::anyhow!("wechat: {e}"))?;
    let handler = Arc::new(ReleaseCheck::new(
        tokens,
        wechat,
        Ledger::new(store.clone()),
        Duration::from_secs(config.worker.sent_ttl_secs.max(1)),
    ));

    // Readiness means "can do its job", and both checks are hard: without RabbitMQ no job
    // arrives, and without Redis no job can be checked against (or recorded in) the sent ledger,
    // so every job is requeued. Both are unready. (No Service routes to the worker: unready only
    // holds a rollout back and shows on dashboards.)
    let readiness = {
        let (store, bus) = (store.clone(), bus.clone());
        Readiness::new()
            .with("redis", move || {
                let store = store.clone();
                async move { store.ping().await.map_err(|e| e.to_string()) }
            })
            .with("rabbitmq", move || {
                let connected = bus.is_connected();
                async move {
                    if connected {
                        Ok("connected".into())
                    } else {
                        Err("not connected".into())
                    }
                }
            })
    };
    let ops_server = axum::serve(ops_listener, ops::router(readiness))
        .with_graceful_shutdown(cancel.clone().cancelled_owned());
    let ops_task = tokio::spawn(async move { ops_server.await });
    let consumer = tokio::spawn(consume(
        bus.clone(),
        queue,
        config.worker.release_check_concurrency,
        grace,
        move |received| {
            let handler = handler.clone();
            async move { handler.handle(received).await }
        },
        cancel.clone(),
    ));
    tracing::info!(namespace = config.namespace, "worker running");

    shutdown.await;
    tracing::info!("worker draining");
    cancel.cancel();
    wxhub_runtime::shutdown::drain("worker", grace, async {
        let _ = consumer.await;
        let _ = ops_task.await;
    })
    .await;
    bus.close().await;
    Ok(())
}
