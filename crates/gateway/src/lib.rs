//! wxhub-gateway: the public entry of wxhub.
//!
//! WeChat POSTs callbacks to `/wx/{tenant}/component`, `/wx/{tenant}/callback/{appid}` and
//! `/wx/{tenant}/callback`; the gateway verifies, decrypts and parses them, answers the
//! release-check robots itself, deduplicates retries in Redis and publishes a
//! `wxhub.events.v1.CallbackEvent` to RabbitMQ — and answers 2xx only after the broker confirmed
//! it (503 otherwise, so WeChat retries). `docs/gateway.md` is the operator's reference.
//!
//! Start it in-process with [`run`] (tests pass a port-0 listener), or build a [`Gateway`] to
//! get at its [`AppState`] and [`Router`]. Other features of the gateway (the authorization
//! pages) add routes to [`routes`].
//!
//! Depends on the protocol crates (crypto, message), the service kit (runtime), bus, store and
//! proto; never on another service.

mod authorize;
mod callback;
pub mod config;
mod delivery;
mod event;
mod failure;
mod forwarded;
mod http1;
mod meter;
mod params;
pub mod release;
mod state;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wxhub_bus::{Bus, Topology};
use wxhub_message::Limits;
use wxhub_runtime::ops::{self, Readiness, Status};
use wxhub_runtime::shutdown::drain;
use wxhub_runtime::{Clock, SystemClock, TenantsHandle};
use wxhub_store::Store;
use wxhub_store::dedupe::Dedupe;
use wxhub_store::nonces::Nonces;
use wxhub_token_client::TokenClient;

pub use config::{DEFAULTS, GatewayConfig, GatewaySection, RedisDown};
pub use event::{CALLBACK_EVENT_TYPE, RELEASE_CHECK_JOB_TYPE};
pub use state::AppState;

use crate::state::Shared;

/// Every WeChat-facing route of the gateway (without `/healthz`, `/readyz`, `/metrics`).
/// Features that add pages merge their `Router<AppState>` here.
pub fn routes() -> Router<AppState> {
    callback::routes().merge(authorize::routes())
}

/// The complete HTTP application: [`routes`] with `state`, plus `/healthz`, `/readyz` and
/// `/metrics`.
pub fn router(state: AppState) -> Router {
    let readiness = readiness(&state);
    routes().with_state(state).merge(ops::router(readiness))
}

/// `/readyz`: whether this gateway can take WeChat's callbacks. Unready (503, out of the
/// Service) without RabbitMQ (nothing could be stored), without tenants, while draining, and
/// without Redis under `redis_down = "reject"` (every callback would get 503). Under
/// `redis_down = "publish"` a Redis outage is only degraded: callbacks are still stored (without
/// dedupe; plaintext-mode ones get 503), and taking every replica out of the Service for it
/// would turn that into WeChat's three tries failing.
fn readiness(state: &AppState) -> Readiness {
    let (redis, bus, tenants, serving) =
        (state.clone(), state.clone(), state.clone(), state.clone());
    Readiness::new()
        .with_status("redis", move || {
            let store = redis.store().clone();
            let mode = redis.shared.redis_down;
            async move {
                match (store.ping().await, mode) {
                    (Ok(pong), _) => Status::Ready(pong),
                    (Err(e), RedisDown::Publish) => Status::Degraded(format!(
                        "{e}; publishing without dedupe (redis_down = \"publish\"), \
                         plaintext-mode callbacks get 503"
                    )),
                    (Err(e), RedisDown::Reject) => Status::Unready(format!(
                        "{e}; every callback gets 503 (redis_down = \"reject\")"
                    )),
                }
            }
        })
        .with("rabbitmq", move || {
            let connected = bus.bus().is_connected();
            async move {
                if connected {
                    Ok("connected".to_owned())
                } else {
                    Err("not connected".to_owned())
                }
            }
        })
        .with("tenants", move || {
            let n = tenants.tenants().current().len();
            async move {
                if n > 0 {
                    Ok(format!("{n} loaded"))
                } else {
                    Err("no tenants loaded".to_owned())
                }
            }
        })
        .with("serving", move || {
            let draining = serving.is_draining();
            async move {
                if draining {
                    Err("shutting down".to_owned())
                } else {
                    Ok("accepting".to_owned())
                }
            }
        })
}

/// Injection points of [`Gateway::start_with`] and [`run_with`] (tests, the demo, embedding).
pub struct Options {
    /// Tenants to use instead of loading `tenants.file` (a file-backed handle is still watched
    /// for changes).
    pub tenants: Option<TenantsHandle>,
    /// "Now" for the `CreateTime` skew check: the simulator's virtual clock in tests, whose
    /// pushes carry virtual time in `CreateTime`. (The query `timestamp` is always checked
    /// against the system clock: WeChat, and the simulator, put real time there.)
    pub clock: Arc<dyn Clock>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            tenants: None,
            clock: Arc::new(SystemClock),
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("tenants", &self.tenants)
            .finish_non_exhaustive()
    }
}

/// A started gateway: Redis handle, RabbitMQ supervisor and tenants, ready to serve.
pub struct Gateway {
    state: AppState,
    cancel: CancellationToken,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("state", &self.state)
            .finish()
    }
}

impl Gateway {
    /// Validates `config`, loads the tenants file (and watches it), connects Redis lazily and
    /// starts the RabbitMQ supervisor (it connects in the background; until then callbacks get
    /// 503 and `/readyz` says not ready). Must run inside a Tokio runtime.
    pub fn start(config: GatewayConfig) -> anyhow::Result<Self> {
        Self::start_with(config, Options::default())
    }

    /// Like [`Gateway::start`] with tenants the caller provides (a file-backed handle is still
    /// watched for changes).
    pub fn start_with_tenants(
        config: GatewayConfig,
        tenants: TenantsHandle,
    ) -> anyhow::Result<Self> {
        Self::start_with(
            config,
            Options {
                tenants: Some(tenants),
                ..Options::default()
            },
        )
    }

    /// Like [`Gateway::start`] with injected dependencies.
    pub fn start_with(config: GatewayConfig, options: Options) -> anyhow::Result<Self> {
        config.validate()?;
        let tenants = match options.tenants {
            Some(tenants) => tenants,
            None => TenantsHandle::load(&config.tenants.file).with_context(|| {
                format!("loading tenants from {}", config.tenants.file.display())
            })?,
        };
        let _ = ops::prometheus();
        let cancel = CancellationToken::new();
        tenants.spawn_reloader(
            Duration::from_millis(config.tenants.reload_interval_ms),
            cancel.child_token(),
        );
        let store = Store::connect(&config.redis, &config.namespace).context("redis.url")?;
        let g = &config.gateway;
        let dedupe = Dedupe::new(
            store.clone(),
            Duration::from_millis(g.dedupe_pending_ttl_ms),
            Duration::from_secs(g.dedupe_done_ttl_secs),
        );
        let topology = Topology::new(config.namespace.clone(), config.amqp.delivery_limit);
        let events_exchange: Arc<str> = topology.events_exchange().into();
        let jobs_exchange: Arc<str> = topology.jobs_exchange().into();
        let bus = Bus::start(
            config.amqp.clone(),
            topology,
            "wxhub-gateway",
            cancel.clone(),
        );
        meter::budget(g.deadline());
        let shared = Shared {
            deadline: g.deadline(),
            dedupe_timeout: Duration::from_millis(g.dedupe_timeout_ms),
            window_secs: g.timestamp_window_secs as i64,
            max_body: g.max_body_bytes,
            limits: Limits {
                max_bytes: g.max_body_bytes,
                ..Limits::default()
            },
            redis_down: g.redis_down,
            clock: options.clock,
            max_future_skew_secs: g.max_future_skew_secs as i64,
            nonces: Nonces::new(store.clone()),
            export_spans: !config.telemetry.otlp_endpoint.is_empty(),
            token_client: TokenClient::new(
                &config.token_control.endpoint,
                &config.client.api_key,
                authorize::CALL_TIMEOUT,
            )
            .map_err(|e| e.to_string()),
            pages: authorize::Pages::new(g, store.clone())?,
            tenants,
            bus,
            store,
            completer: dedupe.spawn_completer(),
            dedupe,
            events_exchange,
            jobs_exchange,
            tasks: TaskTracker::new(),
            draining: Default::default(),
            config,
        };
        Ok(Self {
            state: AppState {
                shared: Arc::new(shared),
            },
            cancel,
        })
    }

    /// The shared state (for merging more routes, or for tests).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The HTTP application ([`router`] with this gateway's state).
    pub fn router(&self) -> Router {
        router(self.state.clone())
    }

    /// Serves on `listener` until `shutdown` resolves; then stops accepting, lets in-flight
    /// requests and publishes finish within `shutdown.grace_ms`, and closes the bus.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let app = self.router();
        self.serve_app(app, listener, shutdown).await
    }

    /// [`Gateway::serve`] with an application built from [`Gateway::state`] by the caller.
    pub async fn serve_app(
        self,
        app: Router,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let shared = self.state.shared.clone();
        let addr = listener.local_addr().ok();
        tracing::info!(addr = ?addr, namespace = %shared.config.namespace, "gateway listening");
        let stop = CancellationToken::new();
        let mut server = tokio::spawn(http1::serve(listener, app, stop.clone().cancelled_owned()));
        let early = tokio::select! {
            r = &mut server => Some(r),
            () = shutdown => None,
        };
        if let Some(r) = early {
            self.cancel.cancel();
            shared.bus.close().await;
            return r.map_err(|e| anyhow::Error::new(e).context("http server task failed"));
        }

        // Stop accepting, finish in-flight requests and the publishes they started, bounded.
        let grace = Duration::from_millis(shared.config.shutdown.grace_ms);
        let started = Instant::now();
        shared.draining.store(true, Ordering::Relaxed);
        stop.cancel();
        tracing::info!(
            grace_ms = grace.as_millis() as u64,
            "draining in-flight callbacks"
        );
        if !drain("http requests", grace, &mut server).await {
            server.abort();
        }
        shared.tasks.close();
        let left = grace.saturating_sub(started.elapsed());
        drain("publishes", left, shared.tasks.wait()).await;
        let left = grace.saturating_sub(started.elapsed());
        drain("dedupe markers", left, shared.completer.flush()).await;
        self.cancel.cancel();
        shared.bus.close().await;
        tracing::info!("gateway stopped");
        Ok(())
    }
}

/// Starts a gateway from `config` and serves on `listener` until `shutdown` resolves (see
/// [`Gateway::start`] and [`Gateway::serve`]).
pub async fn run(
    config: GatewayConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    run_with(config, listener, Options::default(), shutdown).await
}

/// [`run`] with injected dependencies (see [`Options`]).
pub async fn run_with(
    config: GatewayConfig,
    listener: TcpListener,
    options: Options,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    Gateway::start_with(config, options)?
        .serve(listener, shutdown)
        .await
}
