//! wxhub-gateway: the public entry of wxhub.
//!
//! WeChat POSTs callbacks to `/wx/{tenant}/component`, `/wx/{tenant}/callback/{appid}` and
//! `/wx/{tenant}/callback`; the gateway verifies, decrypts and parses them, answers the
//! release-check robots itself, deduplicates retries in Redis and publishes a
//! `wxhub.events.v1.CallbackEvent` to RabbitMQ — and answers 2xx only after the broker confirmed
//! it (503 otherwise, so WeChat retries). `docs/gateway.md` is the operator's reference.
//!
//! [`Gateway`] is a [`Service`]: [`Service::build`] it from its config (tests inject tenants and
//! a clock through [`Options`], and reach its [`AppState`] before serving), then
//! [`Service::serve`] it on a listener until a shutdown future resolves. Other features of the
//! gateway (the authorization pages) add routes to [`routes`].
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
mod page_policy;
mod params;
pub mod release;
mod state;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use tokio_util::task::TaskTracker;
use wxhub_message::Limits;
use wxhub_runtime::config::{ConfigError, Source};
use wxhub_runtime::ops::{self, Readiness, WhenDown};
use wxhub_runtime::service::{self, Listeners, Service};
use wxhub_runtime::telemetry::TelemetryConfig;
use wxhub_runtime::{Clock, Infra, Server, SystemClock, TenantsHandle};
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
    let redis_down = match state.shared.redis_down {
        RedisDown::Publish => WhenDown::Degraded(
            "publishing without dedupe (redis_down = \"publish\"), plaintext-mode callbacks get \
             503"
            .into(),
        ),
        RedisDown::Reject => {
            WhenDown::Unready("every callback gets 503 (redis_down = \"reject\")".into())
        }
    };
    let (tenants, serving) = (state.clone(), state.clone());
    Readiness::new()
        .redis(state.store(), redis_down)
        .rabbitmq(
            state.bus(),
            WhenDown::Unready("every callback gets 503".into()),
        )
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

/// Injection points of [`Service::build`] (tests, the demo, embedding).
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

/// A built gateway: Redis handle, RabbitMQ supervisor and tenants, ready to serve.
pub struct Gateway {
    state: AppState,
    infra: Infra,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("state", &self.state)
            .finish()
    }
}

impl Gateway {
    /// The shared state (for merging more routes, or for tests).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The HTTP application ([`router`] with this gateway's state).
    pub fn router(&self) -> Router {
        router(self.state.clone())
    }
}

impl Service for Gateway {
    const NAME: &'static str = "wxhub-gateway";
    const ABOUT: &'static str = "WeChat callback gateway of wxhub";
    type Config = GatewayConfig;
    type Options = Options;

    fn load(source: &Source) -> Result<GatewayConfig, ConfigError> {
        GatewayConfig::load(source)
    }

    fn telemetry(config: &GatewayConfig) -> &TelemetryConfig {
        &config.telemetry
    }

    /// `gateway.listen`, with the configured accept queue; `/healthz`, `/readyz` and `/metrics`
    /// are served there too.
    async fn listen(config: &GatewayConfig) -> anyhow::Result<Listeners> {
        let addr = config.gateway.listen_addr()?;
        let listener = service::listener(addr, config.gateway.listen_backlog)
            .map_err(|e| anyhow::anyhow!("cannot bind gateway.listen {addr}: {e}"))?;
        Ok(Listeners::main(listener))
    }

    /// Validates `config`, loads the tenants file (and watches it), connects Redis lazily and
    /// starts the RabbitMQ supervisor (it connects in the background; until then callbacks get
    /// 503 and `/readyz` says not ready).
    async fn build(config: GatewayConfig, options: Options) -> anyhow::Result<Self> {
        config.validate()?;
        let infra = Infra::start(
            Self::NAME,
            &config.namespace,
            &config.redis,
            Some(&config.amqp),
            &config.shutdown,
        )?;
        let tenants = infra.tenants(&config.tenants, options.tenants)?;
        let store = infra.store().clone();
        let bus = infra
            .bus()
            .cloned()
            .context("the gateway publishes to RabbitMQ")?;
        let g = &config.gateway;
        let dedupe = Dedupe::new(
            store.clone(),
            Duration::from_millis(g.dedupe_pending_ttl_ms),
            Duration::from_secs(g.dedupe_done_ttl_secs),
        );
        let events_exchange: Arc<str> = bus.topology().events_exchange().into();
        let jobs_exchange: Arc<str> = bus.topology().jobs_exchange().into();
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
            export_spans: !config.telemetry.otlp_endpoint.is_empty()
                || wxhub_runtime::telemetry::exporting(),
            token_client: TokenClient::new(
                &config.token_control.endpoint,
                &config.client.api_key,
                authorize::CALL_TIMEOUT,
            )
            .map_err(|e| e.to_string()),
            pages: page_policy::Pages::new(g, store.clone())?,
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
            infra,
        })
    }

    /// Serves on `listeners.main` until `shutdown` resolves; then stops accepting, lets
    /// in-flight requests and the publishes they started finish, flushes the dedupe markers
    /// (all within `shutdown.grace_ms`), and closes the bus.
    async fn serve(
        self,
        mut listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let listener = listeners.take_main(Self::NAME)?;
        anyhow::ensure!(
            listeners.ops.is_none(),
            "the gateway serves /healthz, /readyz and /metrics on its main listener"
        );
        let shared = self.state.shared.clone();
        tracing::info!(
            addr = ?listener.local_addr().ok(),
            namespace = %shared.config.namespace,
            "gateway listening"
        );
        let app = self.router();
        let http = Server::spawn("http server", move |stop| async move {
            http1::serve(listener, app, stop.cancelled_owned()).await;
            Ok(())
        });
        self.infra
            .serve(http, None, shutdown, move |drain, http| async move {
                // Stop accepting, finish in-flight requests and the publishes they started.
                shared.draining.store(true, Ordering::Relaxed);
                let served = http.stop(&drain).await;
                shared.tasks.close();
                drain.step("publishes", shared.tasks.wait()).await;
                drain.step("dedupe markers", shared.completer.flush()).await;
                served
            })
            .await
    }
}
