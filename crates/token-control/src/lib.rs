//! token-control: the one authority for every WeChat credential of every tenant, and the
//! authorization flow.
//!
//! - [`engine`]: the one authority for every credential, a facade over rooms named for what
//!   they hold (refresh, fetch, schedule, tickets, authorizers, exchange, reconcile, pre-auth
//!   codes, recovery).
//! - [`service`]: the gRPC service `wxhub.token.v1.TokenControl` (API-key auth, tenant scope,
//!   deadlines), with standard health and reflection.
//! - [`consumer`]: the `{ns}.token-control` queue (tickets and authorization notices).
//! - [`TokenControl`]: the whole service, a [`Service`]: built from its config (tests inject a
//!   clock and tenants through [`Options`] and take the [`Engine`] from the built service), then
//!   served on a gRPC and an ops listener until a shutdown future resolves. `main.rs` is the
//!   runtime's shared `main`. Tests start several replicas in-process.
//!
//! Depends on the runtime, store, bus, proto, message, crypto and wechat-api crates; never on
//! another service.

pub mod clock;
pub mod config;
pub mod consumer;
pub mod engine;
pub mod error;
pub mod service;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use wxhub_proto::token::v1::token_control_server::TokenControlServer;
use wxhub_runtime::config::{ConfigError, Source};
use wxhub_runtime::ops::{Readiness, Status, WhenDown};
use wxhub_runtime::service::{Listeners, Service, bind};
use wxhub_runtime::telemetry::TelemetryConfig;
use wxhub_runtime::{Infra, Server, TenantsHandle};
use wxhub_wechat_api::WechatApi;

pub use clock::{Clock, FnClock, SystemClock};
pub use config::{Config, OaTokenApi, TokenControlConfig};
pub use engine::{Credential, Engine};
pub use service::{AUTH_HEADER, TokenControlService};

/// Injection points for tests, the demo and benchmarks.
pub struct Options {
    /// "Now" for expiry and schedules (the simulator's virtual clock in tests).
    pub clock: Arc<dyn Clock>,
    /// Tenants to use instead of loading `tenants.file` (a file-backed handle is still watched
    /// for changes).
    pub tenants: Option<TenantsHandle>,
    /// Consume `{ns}.token-control` (default true); without it no bus is started.
    pub consume: bool,
    /// Run the schedule poller, ticket watcher and periodic reconcile (default true).
    pub background: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            tenants: None,
            consume: true,
            background: true,
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("consume", &self.consume)
            .field("background", &self.background)
            .finish_non_exhaustive()
    }
}

/// A built token-control replica: its engine over Redis and WeChat, ready to serve.
pub struct TokenControl {
    config: Config,
    infra: Infra,
    engine: Arc<Engine>,
    background: bool,
}

impl std::fmt::Debug for TokenControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenControl")
            .field("namespace", &self.config.namespace)
            .finish_non_exhaustive()
    }
}

impl TokenControl {
    /// The engine (tests and benchmarks inspect it; it is shared with the running service).
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }
}

impl Service for TokenControl {
    const NAME: &'static str = "wxhub-token-control";
    const ABOUT: &'static str = "The WeChat credential authority (gRPC)";
    type Config = Config;
    type Options = Options;

    fn load(source: &Source) -> Result<Config, ConfigError> {
        Config::load(source)
    }

    fn telemetry(config: &Config) -> &TelemetryConfig {
        &config.telemetry
    }

    /// `token_control.listen` (gRPC) and `token_control.ops_listen`.
    async fn listen(config: &Config) -> anyhow::Result<Listeners> {
        let tc = &config.token_control;
        Ok(Listeners::main_and_ops(
            bind(&tc.listen, "token_control.listen").await?,
            bind(&tc.ops_listen, "token_control.ops_listen").await?,
        ))
    }

    /// Validates `config`, loads the tenants (and watches the file), creates the store (lazily
    /// connected), starts the bus (unless `options.consume` is off) and builds the engine.
    async fn build(config: Config, options: Options) -> anyhow::Result<Self> {
        config.validate()?;
        let infra = Infra::start(
            Self::NAME,
            &config.namespace,
            &config.redis,
            options.consume.then_some(&config.amqp),
            &config.shutdown,
        )?;
        let tenants = infra.tenants(&config.tenants, options.tenants)?;
        let api = WechatApi::new(&config.wechat)?;
        let engine = Engine::new(
            infra.store().clone(),
            api,
            &config.wechat.mp_base,
            tenants,
            options.clock,
            config.token_control.clone(),
        );
        Ok(Self {
            config,
            infra,
            engine,
            background: options.background,
        })
    }

    /// Serves gRPC on `listeners.main` and the ops endpoints on `listeners.ops` (consuming
    /// notices and running the background loops meanwhile) until `shutdown` resolves; then
    /// stops advertising, stops accepting, and lets in-flight requests, notices and loops
    /// finish within `shutdown.grace_ms`.
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
            engine,
            background,
        } = self;
        let tc = &config.token_control;
        // Everything that works on the engine's behalf; cancelled first when draining.
        let work = infra.background().child_token();
        let consumer = infra.bus().map(|bus| {
            let queue = bus.topology().token_control_queue();
            let engine = Arc::clone(&engine);
            let delivery_limit = config.amqp.delivery_limit;
            let later = Arc::new(consumer::Later::new(
                bus.clone(),
                queue.clone(),
                tc.retry_delays_ms.clone(),
            ));
            // Its delay queues are declared when the first notice is put off (`delay::publish`
            // declares them when the broker finds no queue for the publish).
            tokio::spawn(wxhub_bus::consume(
                bus.clone(),
                queue,
                tc.consumer_concurrency,
                infra.grace(),
                move |msg| {
                    consumer::handle(Arc::clone(&engine), msg, delivery_limit, Arc::clone(&later))
                },
                work.clone(),
            ))
        });
        let loops = if background {
            engine.spawn_background(work.clone())
        } else {
            Vec::new()
        };

        // Readiness means "can serve tokens". Every token lives in Redis: without it, unready. A
        // missing or stale ticket stops only its own tenant's component tokens (and the engine
        // already asks WeChat for a push), and every replica sees the same Redis: unready would
        // take every replica — and every tenant — out of the Service for one tenant's problem,
        // so it is degraded. RabbitMQ only feeds notices, which wait in their queue: degraded
        // too.
        let mut readiness = Readiness::new().redis(
            infra.store(),
            WhenDown::Unready("no token can be served".into()),
        );
        if tc.ready_requires_ticket {
            let engine = Arc::clone(&engine);
            readiness = readiness.with_status("tickets", move || {
                let engine = Arc::clone(&engine);
                async move {
                    match engine.ticket_readiness().await {
                        Ok(detail) => Status::Ready(detail),
                        Err(problems) => Status::Degraded(problems),
                    }
                }
            });
        }
        if let Some(bus) = infra.bus() {
            readiness = readiness.rabbitmq(
                bus,
                WhenDown::Degraded("tokens are served; notices wait in the queue".into()),
            );
        }

        // gRPC with health and reflection.
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<TokenControlServer<TokenControlService>>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(wxhub_proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("building gRPC reflection")?;
        let service = TokenControlServer::new(TokenControlService::new(Arc::clone(&engine)));
        tracing::info!(
            addr = ?listener.local_addr().ok(),
            namespace = %config.namespace,
            "token-control serving"
        );
        let router = wxhub_runtime::grpc::server(tc.request_timeout())
            .add_service(health_service)
            .add_service(reflection)
            .add_service(service);
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
                    // Stop advertising, stop the loops and the consumer from taking more, stop
                    // accepting; then let what is in flight finish.
                    health_reporter
                        .set_not_serving::<TokenControlServer<TokenControlService>>()
                        .await;
                    work.cancel();
                    let served = grpc.stop(&drain).await;
                    if let Some(consumer) = consumer {
                        drain.step("token-control consumer", consumer).await;
                    }
                    for task in loops {
                        drain.step("background task", task).await;
                    }
                    served
                },
            )
            .await
    }
}
