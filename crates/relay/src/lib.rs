//! wxhub-relay: internal systems call any WeChat API as a tenant's account without ever holding
//! a token.
//!
//! `ANY /v1/{tenant}/{appid}/{wechat path}?{query}` with `Authorization: Bearer <api key>`:
//! the caller is admitted exactly as token-control admits it (the tenants file's clients and
//! their tenants), the path checked against the client's allow-list ([`access`]), and the call
//! forwarded to WeChat's host for the tenant kind with the right credential added, token
//! rejections healed once through token-control, bodies streamed ([`forward`], whose docs hold
//! the retry rules). `docs/relay.md` is the operator's reference.
//!
//! Web OAuth for authorized accounts ([`oauth`]) sits on top: the authorize URL with a
//! single-use `state` in Redis, and the redirect endpoint that exchanges the code and delivers
//! the user to the tenant's business callback.
//!
//! [`Relay`] is a [`Service`]: stateless (Redis holds only OAuth states), any number of replicas.
//! Depends on the service kit, store, token-client and wechat-api; never on another service.

pub mod access;
mod config;
pub mod forward;
pub mod oauth;
mod rate;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use axum::response::Response;
use axum::routing::{any, get, post};
use axum::serve::ListenerExt as _;
use tracing::Instrument as _;
use wxhub_runtime::config::{ConfigError, Source};
use wxhub_runtime::ops::{self, Readiness, WhenDown};
use wxhub_runtime::service::{self, Listeners, Service};
use wxhub_runtime::telemetry::TelemetryConfig;
use wxhub_runtime::{Infra, Server, TenantsHandle};
use wxhub_store::{LeasedLimiter, Store};
use wxhub_token_client::TokenClient;

pub use config::{Config, DEFAULTS, RelaySection};
pub use forward::HeldBytes;

use crate::access::Refusal;
use crate::forward::{Call, Upstream, error_response};

/// Histogram: seconds of a relayed call spent in the relay itself (the call's time in the
/// handler minus WeChat's exchanges; buckets from 10 µs, `wxhub_runtime::ops`).
pub const OWN_SECONDS: &str = "wxhub_relay_own_seconds";

/// Histogram: seconds a relayed call waited for its rate-limit admission (part of its own time).
pub const LIMIT_WAIT_SECONDS: &str = "wxhub_relay_limit_wait_seconds";

/// Histogram: seconds a relayed call waited for its token (cached, or from token-control).
pub const TOKEN_WAIT_SECONDS: &str = "wxhub_relay_token_wait_seconds";

/// Gauge: calls in progress on this replica (its bound is `relay.max_in_flight`).
pub const CALLS_IN_PROGRESS: &str = "wxhub_relay_calls_in_progress";

/// What every request handler shares.
pub struct Shared {
    pub tenants: TenantsHandle,
    pub tokens: forward::Tokens,
    pub upstream: Upstream,
    pub store: Store,
    /// `relay.rate_limit`'s buckets, leased a few units at a time.
    pub limits: LeasedLimiter,
    /// One permit per call in progress, up to `relay.max_in_flight`.
    in_flight: Arc<tokio::sync::Semaphore>,
    pub config: Config,
    /// Whether spans are exported (then the relay's own span context is what it passes on).
    export_spans: bool,
}

impl Shared {
    /// Calls in progress on this replica now (counted against `relay.max_in_flight`).
    pub fn calls_in_progress(&self) -> usize {
        (self.config.relay.max_in_flight as usize)
            .saturating_sub(self.in_flight.available_permits())
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

/// Injection points of [`Service::build`] (tests, embedding).
#[derive(Debug, Default)]
pub struct Options {
    /// Tenants to use instead of loading `tenants.file`.
    pub tenants: Option<TenantsHandle>,
}

/// A built relay.
pub struct Relay {
    shared: Arc<Shared>,
    infra: Infra,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").finish_non_exhaustive()
    }
}

impl Relay {
    /// The shared state (tests read [`HeldBytes`] from it).
    pub fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }
}

/// The relay's routes with `shared`, plus `/healthz`, `/readyz`, `/metrics`.
pub fn router(shared: Arc<Shared>) -> Router {
    let readiness = Readiness::new().redis(
        &shared.store,
        WhenDown::Degraded("web OAuth cannot issue or check states; relayed calls work".into()),
    );
    Router::new()
        .route("/v1/{tenant}/{appid}/{*path}", any(relay))
        .route(
            "/oauth/{tenant}/{appid}/authorize-url",
            post(oauth::authorize_url),
        )
        .route("/oauth/{tenant}/{appid}/callback", get(oauth::callback))
        .with_state(shared)
        .merge(ops::router(readiness))
}

impl Service for Relay {
    const NAME: &'static str = "wxhub-relay";
    const ABOUT: &'static str = "Calls WeChat's APIs for wxhub's tenants with the right credential";
    type Config = Config;
    type Options = Options;

    fn load(source: &Source) -> Result<Config, ConfigError> {
        Config::load(source)
    }

    fn telemetry(config: &Config) -> &TelemetryConfig {
        &config.telemetry
    }

    /// `relay.listen`; `/healthz`, `/readyz`, `/metrics` are served there too.
    async fn listen(config: &Config) -> anyhow::Result<Listeners> {
        Ok(Listeners::main(
            service::bind(&config.relay.listen, "relay.listen").await?,
        ))
    }

    async fn build(config: Config, options: Options) -> anyhow::Result<Self> {
        config.validate()?;
        let infra = Infra::start(
            Self::NAME,
            &config.namespace,
            &config.redis,
            None,
            &config.shutdown,
        )?;
        let tenants = infra.tenants(&config.tenants, options.tenants)?;
        let tokens = forward::Tokens::new(
            TokenClient::new(
                &config.token_control.endpoint,
                &config.client.api_key,
                config.relay.token_timeout(),
            )?,
            std::time::Duration::from_millis(config.relay.token_cache_ms),
        );
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(3))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .user_agent(concat!("wxhub-relay/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the HTTP client")?;
        let r = &config.relay;
        let upstream = Upstream {
            http,
            api_base: config.wechat.api_base.trim_end_matches('/').to_owned(),
            qyapi_base: config.wechat.qyapi_base.trim_end_matches('/').to_owned(),
            timeout: r.upstream_timeout(),
            busy_backoff: std::time::Duration::from_millis(r.busy_backoff_ms),
            max_body: r.max_body_bytes,
            replay_limit: r.replay_body_bytes,
            inspect_limit: r.inspect_body_bytes,
            held: Arc::new(HeldBytes::default()),
        };
        let shared = Arc::new(Shared {
            tenants,
            tokens,
            upstream,
            store: infra.store().clone(),
            limits: LeasedLimiter::new(infra.store().clone(), config.relay.rate_limit_lease),
            in_flight: Arc::new(tokio::sync::Semaphore::new(
                config.relay.max_in_flight as usize,
            )),
            export_spans: !config.telemetry.otlp_endpoint.is_empty(),
            config,
        });
        Ok(Self { shared, infra })
    }

    async fn serve(
        self,
        mut listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let listener = listeners.take_main(Self::NAME)?;
        anyhow::ensure!(
            listeners.ops.is_none(),
            "the relay serves /healthz, /readyz and /metrics on its main listener"
        );
        tracing::info!(addr = ?listener.local_addr().ok(), "relay listening");
        let app = router(Arc::clone(&self.shared));
        let http = Server::spawn("http server", move |stop| async move {
            // Answers streamed chunk by chunk are written as they come: no Nagle delay
            // waiting for the caller's (delayed) ACK of the headers.
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
                .context("relay http server")
        });
        self.infra
            .serve(http, None, shutdown, |drain, http| async move {
                http.stop(&drain).await
            })
            .await
    }
}

/// The answer to a refused call (nothing was sent to WeChat).
pub(crate) fn refused(r: &Refusal) -> Response {
    metrics::counter!("wxhub_relay_refused_total", "reason" => r.reason).increment(1);
    let mut response = error_response(r.status, r.reason, &r.message);
    response
        .headers_mut()
        .insert(forward::ATTEMPTS, HeaderValue::from(0));
    response
}

/// Request headers a relayed call passes on: the content type, and the W3C trace context
/// (the relay's own span's when spans are exported, else the caller's as it came).
fn pass_on(headers: &HeaderMap, export_spans: bool) -> Vec<(HeaderName, HeaderValue)> {
    let mut pass = Vec::new();
    if let Some(v) = headers.get(header::CONTENT_TYPE) {
        pass.push((header::CONTENT_TYPE, v.clone()));
    }
    let own = if export_spans {
        wxhub_runtime::telemetry::inject_current()
    } else {
        HashMap::new()
    };
    if own.contains_key("traceparent") {
        for (k, v) in own {
            if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
                pass.push((k, v));
            }
        }
    } else {
        for name in ["traceparent", "tracestate"] {
            if let Some(v) = headers.get(name) {
                pass.push((HeaderName::from_static(name), v.clone()));
            }
        }
    }
    pass
}

/// `ANY /v1/{tenant}/{appid}/{*path}`.
async fn relay(
    State(shared): State<Arc<Shared>>,
    method: Method,
    Path((tenant, appid, path)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let span = tracing::info_span!(
        "relay.call",
        tenant = %tenant,
        appid = %appid,
        method = %method,
        family = tracing::field::Empty,
        attempts = tracing::field::Empty,
        errcode = tracing::field::Empty,
    );
    wxhub_runtime::telemetry::set_parent_from(
        &span,
        &wxhub_runtime::telemetry::trace_context(&headers),
    );
    relay_call(shared, method, tenant, appid, path, query, headers, body)
        .instrument(span)
        .await
}

#[allow(clippy::too_many_arguments)]
async fn relay_call(
    shared: Arc<Shared>,
    method: Method,
    tenant: String,
    appid: String,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let tenants = shared.tenants.current();
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let admitted = match tenants.admit(authorization, &tenant) {
        Ok(a) => a,
        Err(e) => return refused(&e.into()),
    };
    let checked = access::wechat_path(&path).and_then(|path| {
        access::allowed(&admitted.client, &path)?;
        let query = access::caller_query(query.as_deref())?;
        let target = access::target(&admitted.tenant, &appid, &path)?;
        Ok((path, query, target))
    });
    let (path, query, target) = match checked {
        Ok(c) => c,
        Err(r) => return refused(&r),
    };
    let family = access::family(&path);
    tracing::Span::current().record("family", family);
    // Past the bound, refused before a rate-limit unit is spent or anything is sent: a stalled
    // WeChat must not make this replica hold a connection (and a descriptor) per waiting call.
    let Ok(permit) = Arc::clone(&shared.in_flight).try_acquire_owned() else {
        return overloaded(shared.config.relay.max_in_flight);
    };
    let permit = InProgress::counted(permit);
    let t_rate = Instant::now();
    if let Err(r) = rate::admit(&shared, &tenant, &target, &path).await {
        return refused(&r);
    }
    metrics::histogram!(LIMIT_WAIT_SECONDS).record(t_rate.elapsed().as_secs_f64());
    let outbound = match shared.upstream.outbound(&method, &headers, body).await {
        Ok(o) => o,
        Err(r) => return refused(&r),
    };
    let call = Call {
        tenant: &tenant,
        target: &target,
        method,
        path: &path,
        query,
        pass: pass_on(&headers, shared.export_spans),
    };
    let forwarded = match shared
        .upstream
        .forward(&shared.tokens, call, outbound)
        .await
    {
        Ok(f) => f,
        Err(r) => return refused(&r),
    };
    let errcode = match forwarded.errcode {
        Some(code) => code.to_string(),
        None => forwarded.outcome.to_owned(),
    };
    let span = tracing::Span::current();
    span.record("attempts", forwarded.attempts);
    span.record("errcode", errcode.as_str());
    metrics::counter!(
        "wxhub_relay_calls_total",
        "tenant" => tenant,
        "family" => family,
        "errcode" => errcode,
    )
    .increment(1);
    let took = started.elapsed();
    metrics::histogram!("wxhub_relay_call_seconds", "family" => family).record(took.as_secs_f64());
    // The relay's own share: everything but WeChat's exchanges (admission, rate limit, token,
    // URL, reading the answer's errcode, retry backoffs). Hyper's parsing of the request and
    // writing of the answer happen outside this handler and are not in it.
    metrics::histogram!(OWN_SECONDS).record(took.saturating_sub(forwarded.upstream).as_secs_f64());
    if forwarded.outcome != forward::STREAMED {
        return forwarded.response;
    }
    // A streamed answer is still coming from WeChat after this returns: its permit goes with
    // it, released when the last chunk is sent or the caller hangs up.
    forwarded.response.map(|body| {
        Body::from_stream(futures::StreamExt::map(
            body.into_data_stream(),
            move |chunk| {
                let _held = &permit;
                chunk
            },
        ))
    })
}

/// A call's place among `relay.max_in_flight`, counted in `wxhub_relay_calls_in_progress`
/// until dropped.
struct InProgress {
    /// Held, not read: dropping it gives the place back.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl InProgress {
    fn counted(permit: tokio::sync::OwnedSemaphorePermit) -> Self {
        metrics::gauge!(CALLS_IN_PROGRESS).increment(1.0);
        Self { _permit: permit }
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        metrics::gauge!(CALLS_IN_PROGRESS).decrement(1.0);
    }
}

/// 503 for a call past `relay.max_in_flight`, with `Retry-After`.
fn overloaded(max_in_flight: u32) -> Response {
    let mut response = refused(&Refusal::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "relay_overloaded",
        format!(
            "this relay replica has relay.max_in_flight ({max_in_flight}) calls in progress; \
             retry shortly"
        ),
    ));
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(1));
    response
}
