//! token-control: the one authority for every WeChat credential of every tenant, and the
//! authorization flow.
//!
//! - [`engine`]: the one authority for every credential, a facade over rooms named for what
//!   they hold (refresh, fetch, schedule, tickets, authorizers, exchange, reconcile, pre-auth
//!   codes, recovery).
//! - [`service`]: the gRPC service `wxhub.token.v1.TokenControl` (API-key auth, tenant scope,
//!   deadlines), with standard health and reflection.
//! - [`consumer`]: the `{ns}.token-control` queue (tickets and authorization notices).
//! - [`run`] / [`run_with`]: the whole service on a given listener until a shutdown future
//!   resolves; `main.rs` only parses flags. Tests start several replicas in-process.
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
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wxhub_bus::{Bus, Topology};
use wxhub_proto::token::v1::token_control_server::TokenControlServer;
use wxhub_runtime::TenantsHandle;
use wxhub_runtime::ops::{Readiness, Status};
use wxhub_store::Store;
use wxhub_wechat_api::WechatApi;

pub use clock::{Clock, FnClock, SystemClock};
pub use config::{Config, TokenControlConfig};
pub use engine::{Credential, Engine};
pub use service::{AUTH_HEADER, TokenControlService};

/// Injection points for tests, the demo and benchmarks.
pub struct Options {
    /// "Now" for expiry and schedules (the simulator's virtual clock in tests).
    pub clock: Arc<dyn Clock>,
    /// Tenants to use instead of loading `tenants.file`.
    pub tenants: Option<TenantsHandle>,
    /// The ops listener (default: bind `token_control.ops_listen`).
    pub ops_listener: Option<TcpListener>,
    /// Consume `{ns}.token-control` (default true).
    pub consume: bool,
    /// Run the schedule poller, ticket watcher and periodic reconcile (default true).
    pub background: bool,
    /// Receives the engine once it is built (tests and benchmarks inspect it).
    pub engine_tx: Option<tokio::sync::oneshot::Sender<Arc<Engine>>>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            tenants: None,
            ops_listener: None,
            consume: true,
            background: true,
            engine_tx: None,
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

/// Serves token-control on `listener` until `shutdown` resolves, then drains (bounded by
/// `shutdown.grace_ms`).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with(config, listener, Options::default(), shutdown).await
}

/// [`run`] with injected dependencies.
pub async fn run_with(
    config: Config,
    listener: TcpListener,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate()?;
    // Install the metrics recorder before anything can count (background tasks, the first
    // RPCs): until then counters go nowhere.
    let _ = wxhub_runtime::ops::prometheus();
    let cancel = CancellationToken::new();
    let grace = Duration::from_millis(config.shutdown.grace_ms.max(1));
    let tenants = match options.tenants {
        Some(t) => t,
        None => {
            let handle = TenantsHandle::load(&config.tenants.file)
                .with_context(|| format!("loading {}", config.tenants.file.display()))?;
            handle.spawn_reloader(
                Duration::from_millis(config.tenants.reload_interval_ms.max(100)),
                cancel.clone(),
            );
            handle
        }
    };
    let store = Store::connect(&config.redis, &config.namespace)?;
    let api = WechatApi::new(&config.wechat)?;
    let engine = Engine::new(
        store,
        api,
        &config.wechat.mp_base,
        tenants,
        options.clock,
        config.token_control.clone(),
    );
    if let Some(tx) = options.engine_tx {
        let _ = tx.send(Arc::clone(&engine));
    }

    // RabbitMQ: the consumer of component notices.
    let bus = options.consume.then(|| {
        Bus::start(
            config.amqp.clone(),
            Topology::new(config.namespace.clone(), config.amqp.delivery_limit),
            "wxhub-token-control",
            cancel.clone(),
        )
    });
    let consumer = bus.as_ref().map(|bus| {
        let queue = bus.topology().token_control_queue();
        let engine = Arc::clone(&engine);
        let delivery_limit = config.amqp.delivery_limit;
        tokio::spawn(wxhub_bus::consume(
            bus.clone(),
            queue,
            config.token_control.consumer_concurrency,
            grace,
            move |msg| consumer::handle(Arc::clone(&engine), msg, delivery_limit),
            cancel.clone(),
        ))
    });

    let background = if options.background {
        engine.spawn_background(cancel.clone())
    } else {
        Vec::new()
    };

    // Ops HTTP.
    let ops_listener = match options.ops_listener {
        Some(l) => l,
        None => TcpListener::bind(&config.token_control.ops_listen)
            .await
            .with_context(|| format!("binding {}", config.token_control.ops_listen))?,
    };
    // Readiness means "can serve tokens". Every token lives in Redis: without it, unready. A
    // missing or stale ticket stops only its own tenant's component tokens (and the engine
    // already asks WeChat for a push), and every replica sees the same Redis: unready would take
    // every replica — and every tenant — out of the Service for one tenant's problem, so it is
    // degraded. RabbitMQ only feeds notices, which wait in their queue: degraded too.
    let readiness = {
        let (e1, e2) = (Arc::clone(&engine), Arc::clone(&engine));
        let mut r = Readiness::new().with("redis", move || {
            let e = Arc::clone(&e1);
            async move { e.ping().await }
        });
        if config.token_control.ready_requires_ticket {
            r = r.with_status("tickets", move || {
                let e = Arc::clone(&e2);
                async move {
                    match e.ticket_readiness().await {
                        Ok(detail) => Status::Ready(detail),
                        Err(problems) => Status::Degraded(problems),
                    }
                }
            });
        }
        if let Some(bus) = bus.clone() {
            r = r.with_status("amqp", move || {
                let connected = bus.is_connected();
                async move {
                    if connected {
                        Status::Ready("connected".to_owned())
                    } else {
                        Status::Degraded(
                            "disconnected (tokens are served; notices wait in the queue)"
                                .to_owned(),
                        )
                    }
                }
            });
        }
        r
    };
    let ops_cancel = cancel.clone();
    let ops_router = wxhub_runtime::ops::router(readiness);
    let ops = tokio::spawn(async move {
        axum::serve(ops_listener, ops_router)
            .with_graceful_shutdown(ops_cancel.cancelled_owned())
            .await
    });

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
    let addr = listener.local_addr().ok();
    tracing::info!(?addr, namespace = %config.namespace, "token-control serving");
    let server_cancel = cancel.clone();
    let mut server = tokio::spawn(
        tonic::transport::Server::builder()
            .timeout(config.token_control.request_timeout() + Duration::from_secs(1))
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(service)
            .serve_with_incoming_shutdown(
                // TCP_NODELAY: small responses must not wait on Nagle + delayed ACK (~40 ms).
                tonic::transport::server::TcpIncoming::from(listener)
                    .with_nodelay(Some(true))
                    .with_keepalive(Some(Duration::from_secs(60))),
                server_cancel.cancelled_owned(),
            ),
    );

    let failed = tokio::select! {
        () = shutdown => None,
        r = &mut server => Some(match r {
            Ok(Ok(())) => anyhow::anyhow!("gRPC server stopped unexpectedly"),
            Ok(Err(e)) => anyhow::anyhow!("gRPC server failed: {e}"),
            Err(e) => anyhow::anyhow!("gRPC server task failed: {e}"),
        }),
    };

    // Drain: stop advertising, stop accepting, finish in-flight work — all bounded.
    health_reporter
        .set_not_serving::<TokenControlServer<TokenControlService>>()
        .await;
    cancel.cancel();
    if failed.is_none() {
        wxhub_runtime::shutdown::drain("grpc server", grace, &mut server).await;
    }
    if let Some(consumer) = consumer {
        wxhub_runtime::shutdown::drain("token-control consumer", grace, consumer).await;
    }
    for task in background {
        wxhub_runtime::shutdown::drain("background task", grace, task).await;
    }
    wxhub_runtime::shutdown::drain("ops server", grace, ops).await;
    if let Some(bus) = bus {
        wxhub_runtime::shutdown::drain("bus", grace, bus.close()).await;
    }
    server.abort();
    tracing::info!("token-control stopped");
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
