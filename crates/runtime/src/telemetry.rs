//! Tracing setup and W3C trace-context propagation.
//!
//! `init` installs: an `EnvFilter` (config default, `RUST_LOG` overrides), text or JSON output,
//! the W3C `traceparent` propagator, and — only when an OTLP endpoint is configured — an OTLP/gRPC
//! span exporter. Services instrument with `tracing`; [`inject_current`] / [`set_parent_from`]
//! (from `wxhub_domain::trace`, where the bus, the WeChat client and the token client reach
//! them too) carry the trace across HTTP, AMQP and gRPC headers.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::{Deserialize, Serialize};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{ConfigError, http_url};

pub use wxhub_domain::trace::{exporting, inject_current, set_parent_from};

/// `[telemetry]` config section (a key it does not know is refused).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Log output (default `text`).
    pub format: LogFormat,
    /// Default filter directives, `tracing` EnvFilter syntax (default `info`; `RUST_LOG`
    /// overrides).
    pub filter: String,
    /// OTLP/gRPC endpoint (e.g. `http://otel-collector:4317`); empty (the default) disables
    /// export.
    pub otlp_endpoint: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, with the current span.
    Json,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info".into(),
            otlp_endpoint: String::new(),
        }
    }
}

impl TelemetryConfig {
    /// Checks what the types cannot: the filter parses, the endpoint (if any) is a URL.
    pub fn validate(&self) -> Result<(), ConfigError> {
        EnvFilter::try_new(&self.filter).map_err(|e| {
            ConfigError::value("telemetry.filter", format!("{:?}: {e}", self.filter))
        })?;
        if !self.otlp_endpoint.is_empty() {
            http_url("telemetry.otlp_endpoint", &self.otlp_endpoint)?;
        }
        Ok(())
    }
}

/// Flushes and shuts the exporter down (bounded) when dropped or on [`TelemetryGuard::shutdown`].
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Flushes pending spans, waiting at most `timeout`.
    pub fn shutdown(mut self, timeout: Duration) {
        if let Some(provider) = self.provider.take() {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = provider.shutdown();
                let _ = tx.send(());
            });
            let _ = rx.recv_timeout(timeout);
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber for `service`. Call once, from `main`.
pub fn init(service: &str, config: &TelemetryConfig) -> anyhow::Result<TelemetryGuard> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.filter))
        .map_err(|e| anyhow::anyhow!("telemetry.filter {:?}: {e}", config.filter))?;
    let fmt = match config.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer().boxed(),
    };
    let (otel, provider) = if config.otlp_endpoint.is_empty() {
        (None, None)
    } else {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(&config.otlp_endpoint)
            .build()?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(service.to_owned())
                    .build(),
            )
            .build();
        let tracer = provider.tracer(service.to_owned());
        opentelemetry::global::set_tracer_provider(provider.clone());
        wxhub_domain::trace::set_exporting();
        (
            Some(tracing_opentelemetry::layer().with_tracer(tracer)),
            Some(provider),
        )
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| anyhow::anyhow!("tracing subscriber already installed: {e}"))?;
    Ok(TelemetryGuard { provider })
}

/// A subscriber for tests: output captured per test, filter from `TEST_LOG` (default: warn).
/// Safe to call from every test; only the first call installs it.
pub fn init_for_tests() {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_test_writer()
        .try_init();
}

/// The W3C trace context of HTTP (or gRPC) request headers, for [`set_parent_from`].
pub fn trace_context(
    headers: &tonic::codegen::http::HeaderMap,
) -> std::collections::HashMap<String, String> {
    ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|name| {
            let value = headers.get(name)?.to_str().ok()?;
            Some((name.to_owned(), value.to_owned()))
        })
        .collect()
}

/// The span of one gRPC call, a child of the caller's trace (its `traceparent` metadata). For
/// `tonic::transport::Server::builder().trace_fn(rpc_span)`.
pub fn rpc_span(request: &tonic::codegen::http::Request<()>) -> tracing::Span {
    let span = tracing::info_span!("rpc", path = request.uri().path());
    set_parent_from(&span, &trace_context(request.headers()));
    span
}
