//! The wxhub worker: consumes jobs from RabbitMQ and calls WeChat on the tenants' behalf, with
//! tokens from token-control.
//!
//! Today it runs the full-network release check's asynchronous step ([`release_check`]) so the
//! stack passes 全网发布 end to end; the messaging service of design §7 (customer-service,
//! template and subscribe sends with job status and rate limits) is a later issue and will
//! live here too.
//!
//! [`Worker`] is a [`Service`]: built from its config, then served on an ops listener (it has no
//! main listener: it consumes) until a shutdown future resolves, so tests start it in-process.

mod config;
pub mod release_check;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use wxhub_bus::consume;
use wxhub_runtime::config::{ConfigError, Source};
use wxhub_runtime::ops::{Readiness, WhenDown};
use wxhub_runtime::service::{Listeners, Service, bind};
use wxhub_runtime::telemetry::TelemetryConfig;
use wxhub_runtime::{Infra, Server};
use wxhub_store::Ledger;
use wxhub_token_client::TokenClient;
use wxhub_wechat_api::WechatApi;

pub use config::{Config, DEFAULTS, WorkerSection};
pub use release_check::ReleaseCheck;

/// A built worker: the release-check handler over token-control, WeChat and Redis.
pub struct Worker {
    config: Config,
    infra: Infra,
    handler: Arc<ReleaseCheck>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("namespace", &self.config.namespace)
            .finish_non_exhaustive()
    }
}

impl Service for Worker {
    const NAME: &'static str = "wxhub-worker";
    const ABOUT: &'static str = "Consumes wxhub's jobs and calls WeChat";
    type Config = Config;
    /// Nothing to inject yet.
    type Options = ();

    fn load(source: &Source) -> Result<Config, ConfigError> {
        Config::load(source)
    }

    fn telemetry(config: &Config) -> &TelemetryConfig {
        &config.telemetry
    }

    /// `worker.ops_listen`.
    async fn listen(config: &Config) -> anyhow::Result<Listeners> {
        Ok(Listeners::ops(
            bind(&config.worker.ops_listen, "worker.ops_listen").await?,
        ))
    }

    /// Validates `config`, creates the store (lazily connected), starts the bus, and builds
    /// the handler with its token-control and WeChat clients.
    async fn build(config: Config, (): ()) -> anyhow::Result<Self> {
        config.validate()?;
        let infra = Infra::start(
            Self::NAME,
            &config.namespace,
            &config.redis,
            Some(&config.amqp),
            &config.shutdown,
        )?;
        let tokens = TokenClient::new(
            &config.token_control.endpoint,
            &config.client.api_key,
            Duration::from_millis(config.worker.token_timeout_ms),
        )?;
        let wechat = WechatApi::new(&config.wechat).map_err(|e| anyhow::anyhow!("wechat: {e}"))?;
        let handler = Arc::new(ReleaseCheck::new(
            tokens,
            wechat,
            Ledger::new(infra.store().clone()),
            Duration::from_secs(config.worker.sent_ttl_secs),
        ));
        Ok(Self {
            config,
            infra,
            handler,
        })
    }

    /// Consumes until `shutdown` resolves, with the ops endpoints on `listeners.ops`; then
    /// stops taking deliveries, lets in-flight jobs finish and be acked (within
    /// `shutdown.grace_ms`), and closes the bus.
    async fn serve(
        self,
        mut listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let ops = listeners.take_ops(Self::NAME)?;
        let Self {
            config,
            infra,
            handler,
        } = self;
        let bus = infra
            .bus()
            .cloned()
            .context("the worker consumes from RabbitMQ")?;
        // Readiness means "can do its job", and both checks are hard: without RabbitMQ no job
        // arrives, and without Redis no job can be checked against (or recorded in) the sent
        // ledger, so every job is requeued. Both are unready. (No Service routes to the worker:
        // unready only holds a rollout back and shows on dashboards.)
        let readiness = Readiness::new()
            .redis(
                infra.store(),
                WhenDown::Unready("every job is requeued".into()),
            )
            .rabbitmq(&bus, WhenDown::Unready("no job arrives".into()));
        let queue = bus.topology().release_check_queue();
        let (concurrency, grace) = (config.worker.release_check_concurrency, infra.grace());
        let consumer = Server::spawn("release-check consumer", move |stop| async move {
            consume(
                bus,
                queue,
                concurrency,
                grace,
                move |received| {
                    let handler = handler.clone();
                    async move { handler.handle(received).await }
                },
                stop,
            )
            .await;
            Ok(())
        });
        tracing::info!(namespace = config.namespace, "worker running");
        infra
            .serve(
                consumer,
                Some((ops, readiness)),
                shutdown,
                |drain, consumer| async move { consumer.stop(&drain).await },
            )
            .await
    }
}
