//! The wxhub worker: consumes jobs from RabbitMQ and calls WeChat on the tenants' behalf, with
//! tokens from token-control.
//!
//! - The messaging service (design §7): [`service`] serves `wxhub.messaging.v1.Messaging` on
//!   `worker.listen` (enqueue a customer-service, template or subscribe message after
//!   [`validate`]; jobs, dead letters, replays); [`announce`] puts stored jobs on the broker,
//!   many to a message; [`delivery`] consumes `{ns}.send` and
//!   `{ns}.send-bulk` and sends through WeChat with [`tokens`] from token-control, the shared
//!   Redis limiter, retries through delay queues and the job store's claims; [`feeder`]
//!   announces campaign slices and the jobs a tenant holds over its window; [`status`] matches
//!   WeChat's delivery reports to sent jobs; what waits (a retry, a limit, a store that does not
//!   answer) waits in delay queues (`wxhub_bus::delay`), not in the broker's requeues.
//! - The full-network release check's asynchronous step ([`release_check`]).
//!
//! [`Worker`] is a [`Service`]: built from its config, then served on its gRPC and ops
//! listeners until a shutdown future resolves, so tests start it in-process.

pub mod announce;
mod config;
pub mod delivery;
pub mod feeder;
pub mod release_check;
pub mod service;
pub mod status;
pub mod tokens;
pub mod validate;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use wxhub_bus::{Topology, consume, delay};
use wxhub_proto::messaging::v1::messaging_server::MessagingServer;
use wxhub_runtime::config::{ConfigError, Source};
use wxhub_runtime::ops::{Readiness, WhenDown};
use wxhub_runtime::service::{Listeners, Service, bind};
use wxhub_runtime::telemetry::TelemetryConfig;
use wxhub_runtime::{Infra, Server, TenantsHandle};
use wxhub_store::{Authorizers, Campaigns, Jobs, Ledger};
use wxhub_token_client::TokenClient;
use wxhub_wechat_api::WechatApi;

use crate::announce::Announcer;

pub use config::{Config, DEFAULTS, Limits, WorkerSection};
pub use delivery::Delivery;
pub use release_check::ReleaseCheck;
pub use service::MessagingService;

/// What tests and the demo inject.
#[derive(Debug, Default)]
pub struct Options {
    /// The tenants (default: `tenants.file`, hot-reloaded).
    pub tenants: Option<TenantsHandle>,
}

/// A built worker: the release-check handler, the messaging service and its deliveries.
pub struct Worker {
    config: Config,
    infra: Infra,
    handler: Arc<ReleaseCheck>,
    service: MessagingService,
    send: Arc<Delivery>,
    bulk: Arc<Delivery>,
    status: Arc<status::DeliveryReports>,
    feeder: Arc<feeder::Feeder>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("namespace", &self.config.namespace)
            .finish_non_exhaustive()
    }
}

/// Each queue the worker consumes with delay queues, and their tiers (`wxhub_bus::delay`): the
/// sends' with every tier, the delivery reports' with those a store failure waits in.
fn delayed_queues(config: &Config, topology: &Topology) -> Vec<(String, Vec<u32>)> {
    let tiers = config.worker.delay_tiers();
    vec![
        (topology.send_queue(), tiers.clone()),
        (topology.send_bulk_queue(), tiers),
        (
            topology.send_status_queue(),
            config.worker.report_delay_tiers(),
        ),
    ]
}

/// The delay queues the worker declares (tests clean them up).
pub fn delay_queues(config: &Config, topology: &Topology) -> Vec<String> {
    delayed_queues(config, topology)
        .into_iter()
        .flat_map(|(queue, tiers)| tiers.into_iter().map(move |t| format!("{queue}.retry.{t}")))
        .collect()
}

impl Service for Worker {
    const NAME: &'static str = "wxhub-worker";
    const ABOUT: &'static str = "Sends wxhub's messages and runs its jobs, calling WeChat";
    type Config = Config;
    type Options = Options;

    fn load(source: &Source) -> Result<Config, ConfigError> {
        Config::load(source)
    }

    fn telemetry(config: &Config) -> &TelemetryConfig {
        &config.telemetry
    }

    /// `worker.listen` (gRPC) and `worker.ops_listen`.
    async fn listen(config: &Config) -> anyhow::Result<Listeners> {
        Ok(Listeners::main_and_ops(
            bind(&config.worker.listen, "worker.listen").await?,
            bind(&config.worker.ops_listen, "worker.ops_listen").await?,
        ))
    }

    /// Validates `config`, creates the store (lazily connected), starts the bus, loads the
    /// tenants, and builds the handlers with their token-control and WeChat clients.
    async fn build(config: Config, options: Options) -> anyhow::Result<Self> {
        config.validate()?;
        let infra = Infra::start(
            Self::NAME,
            &config.namespace,
            &config.redis,
            Some(&config.amqp),
            &config.shutdown,
        )?;
        let tenants = infra.tenants(&config.tenants, options.tenants)?;
        let tokens = TokenClient::new(
            &config.token_control.endpoint,
            &config.client.api_key,
            Duration::from_millis(config.worker.token_timeout_ms),
        )?;
        let wechat = WechatApi::new(&config.wechat).map_err(|e| anyhow::anyhow!("wechat: {e}"))?;
        let store = infra.store().clone();
        let handler = Arc::new(ReleaseCheck::new(
            tokens.clone(),
            wechat.clone(),
            Ledger::new(store.clone()),
            Duration::from_secs(config.worker.sent_ttl_secs),
        ));
        let w = &config.worker;
        let jobs = Jobs::new(
            store.clone(),
            Duration::from_secs(w.job_ttl_secs),
            Duration::from_secs(w.idempotency_ttl_secs),
        )
        .with_tenant_window(w.tenant_window)
        .with_most_held(w.tenant_held_max);
        let bus = infra.bus().cloned().context("the worker uses RabbitMQ")?;
        let campaign_store = Campaigns::new(store.clone(), Duration::from_secs(w.job_ttl_secs));
        let feeder = Arc::new(feeder::Feeder {
            tenants: tenants.clone(),
            campaigns: campaign_store.clone(),
            jobs: jobs.clone(),
            busy: wxhub_store::BusyTenants::new(store.clone()),
            bus: bus.clone(),
            limits: w.limits,
            tick: Duration::from_millis(w.campaign_tick_ms),
            batch: w.announce_batch,
        });
        let service = MessagingService::new(
            tenants,
            jobs.clone(),
            campaign_store,
            w.campaign_max_recipients,
            Authorizers::new(store.clone()),
            Announcer::start(bus.clone(), w.announce_batch),
            Duration::from_millis(w.request_timeout_ms),
        );
        let cache = Arc::new(tokens::TokenCache::new(tokens));
        let settings = delivery::Settings::from_config(w);
        let delivery = |queue: String, concurrency: usize| {
            Arc::new(Delivery::new(
                jobs.clone(),
                cache.clone(),
                wechat.clone(),
                bus.clone(),
                queue,
                settings.clone(),
                concurrency,
            ))
        };
        let send = delivery(bus.topology().send_queue(), w.send_concurrency);
        let bulk = delivery(bus.topology().send_bulk_queue(), w.bulk_concurrency);
        let status_queue = bus.topology().send_status_queue();
        let status = Arc::new(status::DeliveryReports::new(
            jobs,
            bus.clone(),
            w.report_delay_tiers(),
            status_queue,
        ));
        Ok(Self {
            config,
            infra,
            handler,
            service,
            send,
            bulk,
            status,
            feeder,
        })
    }

    /// Serves gRPC on `listeners.main` and the ops endpoints on `listeners.ops`, consuming
    /// meanwhile, until `shutdown` resolves; then stops advertising and accepting, stops taking
    /// deliveries, lets in-flight sends finish and be recorded and acked (within
    /// `shutdown.grace_ms`), and closes the bus.
    async fn serve(
        self,
        mut listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let listener = listeners.take_main(Self::NAME)?;
        let ops = listeners.take_ops(Self::NAME)?;
        let Self {
            config,
            infra,
            handler,
            service,
            send,
            bulk,
            status,
            feeder,
        } = self;
        let bus = infra
            .bus()
            .cloned()
            .context("the worker consumes from RabbitMQ")?;
        // Readiness means "can do its job", and both checks are hard: without RabbitMQ no job
        // arrives, and without Redis no job can be claimed or recorded, so every job is
        // requeued. Both are unready.
        let readiness = Readiness::new()
            .redis(
                infra.store(),
                WhenDown::Unready("every job is requeued".into()),
            )
            .rabbitmq(&bus, WhenDown::Unready("no job arrives".into()));
        let w = &config.worker;
        let (grace, work) = (infra.grace(), infra.background().child_token());
        {
            let bus = bus.clone();
            let delayed = delayed_queues(&config, bus.topology());
            tokio::spawn(async move {
                if bus.wait_connected(Duration::from_secs(30)).await {
                    for (queue, tiers) in delayed {
                        if let Err(e) = delay::declare_tiers(&bus, &queue, &tiers).await {
                            tracing::warn!(error = e, queue, "cannot declare the delay queues yet");
                        }
                    }
                }
            });
        }
        let mut consumers = Vec::new();
        let topology = bus.topology().clone();
        consumers.push(tokio::spawn(consume(
            bus.clone(),
            topology.release_check_queue(),
            w.release_check_concurrency,
            grace,
            move |received| {
                let handler = handler.clone();
                async move { handler.handle(received).await }
            },
            work.clone(),
        )));
        for (queue, delivery, concurrency) in [
            (topology.send_queue(), send, w.send_concurrency),
            (topology.send_bulk_queue(), bulk, w.bulk_concurrency),
        ] {
            consumers.push(tokio::spawn(consume(
                bus.clone(),
                queue,
                concurrency,
                grace,
                move |received| {
                    let delivery = delivery.clone();
                    async move { delivery.handle(received).await }
                },
                work.clone(),
            )));
        }
        consumers.push(tokio::spawn(consume(
            bus.clone(),
            topology.send_status_queue(),
            w.status_concurrency,
            grace,
            move |received| {
                let status = status.clone();
                async move { status.handle(received).await }
            },
            work.clone(),
        )));

        consumers.push(tokio::spawn(feeder.run(work.clone())));

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<MessagingServer<MessagingService>>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(wxhub_proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("building gRPC reflection")?;
        let router = wxhub_runtime::grpc::server(Duration::from_millis(w.request_timeout_ms))
            .add_service(health_service)
            .add_service(reflection)
            // A campaign of 100,000 recipients is several MB.
            .add_service(MessagingServer::new(service).max_decoding_message_size(32 * 1024 * 1024));
        tracing::info!(
            addr = ?listener.local_addr().ok(),
            namespace = config.namespace,
            "worker serving"
        );
        let grpc = Server::spawn("grpc server", move |stop| async move {
            router
                .serve_with_incoming_shutdown(
                    wxhub_runtime::grpc::incoming(listener),
                    stop.cancelled_owned(),
                )
                .await
                .context("grpc server")
        });
        infra
            .serve(
                grpc,
                Some((ops, readiness)),
                shutdown,
                move |drain, grpc| async move {
                    health_reporter
                        .set_not_serving::<MessagingServer<MessagingService>>()
                        .await;
                    let served = grpc.stop(&drain).await;
                    // Stop taking deliveries; in-flight sends finish, are recorded and acked.
                    work.cancel();
                    for consumer in consumers {
                        drain.step("consumer", consumer).await;
                    }
                    served
                },
            )
            .await
    }
}
