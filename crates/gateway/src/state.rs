//! The state every handler shares.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::task::TaskTracker;
use wxhub_bus::Bus;
use wxhub_message::Limits;
use wxhub_runtime::{Clock, TenantsHandle};
use wxhub_store::Store;
use wxhub_store::dedupe::{Completer, Dedupe};
use wxhub_store::nonces::Nonces;

use wxhub_token_client::TokenClient;

use crate::config::{GatewayConfig, RedisDown};

pub(crate) struct Shared {
    pub config: GatewayConfig,
    pub tenants: TenantsHandle,
    pub bus: Bus,
    pub store: Store,
    pub dedupe: Dedupe,
    /// Marks published keys done in the background, pipelined.
    pub completer: Completer,
    pub events_exchange: Arc<str>,
    pub jobs_exchange: Arc<str>,
    /// Publish tasks (they may outlive their request); drained on shutdown.
    pub tasks: TaskTracker,
    pub draining: AtomicBool,
    pub deadline: Duration,
    pub dedupe_timeout: Duration,
    pub window_secs: i64,
    pub max_body: usize,
    pub limits: Limits,
    pub redis_down: RedisDown,
    /// "Now" for the CreateTime skew check (protocol time; the simulator's in tests).
    pub clock: Arc<dyn Clock>,
    pub max_future_skew_secs: i64,
    /// Plaintext callbacks' (timestamp, nonce) → body bindings.
    pub nonces: Nonces,
    /// Spans are exported (OTLP configured): per-callback spans at info level.
    pub export_spans: bool,
    /// token-control, for the authorization pages (an error when unconfigured).
    pub token_client: Result<TokenClient, String>,
    /// Rate limits, base URL and trusted proxies of the authorization pages.
    pub pages: crate::page_policy::Pages,
}

/// What handlers see: configuration, tenants, Redis and RabbitMQ. Cheap to clone.
///
/// Other modules of this crate (the authorization pages) add routes on `Router<AppState>` and
/// read what they need through the accessors.
#[derive(Clone)]
pub struct AppState {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("namespace", &self.shared.config.namespace)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// The effective configuration.
    pub fn config(&self) -> &GatewayConfig {
        &self.shared.config
    }

    /// The current tenants (hot-reloaded).
    pub fn tenants(&self) -> &TenantsHandle {
        &self.shared.tenants
    }

    /// The RabbitMQ connection.
    pub fn bus(&self) -> &Bus {
        &self.shared.bus
    }

    /// The Redis store.
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// Whether shutdown has begun (readiness reports not ready).
    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::Relaxed)
    }

    /// The token-control client of the authorization pages, or why there is none
    /// (`token_control.endpoint` / `client.api_key` unusable).
    pub fn token_client(&self) -> Result<&TokenClient, &str> {
        self.shared.token_client.as_ref().map_err(String::as_str)
    }

    /// What the authorization pages need besides token-control.
    pub(crate) fn pages(&self) -> &crate::page_policy::Pages {
        &self.shared.pages
    }
}
