//! The service kit every wxhub binary shares.
//!
//! - [`service`]: the one shape of every service ([`Service`]: build from config, then serve on
//!   given [`Listeners`] until a shutdown future resolves) and the `main` around it.
//! - [`infra`]: the start-up and shut-down every service shares: metrics recorder, Redis,
//!   RabbitMQ with its topology, tenants with hot reload, the ops server, the ordered bounded
//!   drain.
//! - [`config`]: layered configuration (section defaults → `--config` file / `WXHUB_CONFIG` →
//!   `WXHUB_<SECTION>__<KEY>` environment), strict sections, redacted `--dump-config`.
//! - [`tenants`]: `[tenants]` and [`TenantsHandle`], the tenants file hot-reloaded (its format
//!   is `wxhub_domain::tenants`).
//! - [`telemetry`]: tracing subscriber (text or JSON), optional OTLP export, W3C trace-context
//!   propagation helpers for HTTP and AMQP headers.
//! - [`ops`]: Prometheus `/metrics`, `/healthz`, `/readyz` (ready, degraded or unready per
//!   check), with the checks of Redis and RabbitMQ.
//! - [`shutdown`]: SIGTERM/SIGINT into a `CancellationToken`, drains bounded by one grace period.
//! - [`grpc`]: how every gRPC service admits a call (API key, tenant scope, deadline).
//! - [`ErrorCode`]: one table mapping error classes to HTTP statuses and gRPC codes.
//!
//! The domain types services need (ids, tenants, secrets, the clock) are re-exported from
//! `wxhub-domain`. Depends on the domain, store and bus crates; service crates depend on this
//! one, never the reverse.

pub mod config;
mod error;
pub mod grpc;
pub mod infra;
pub mod ops;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod tenants;

pub use error::ErrorCode;
pub use infra::{Infra, Server};
pub use service::{Listeners, Service};
pub use tenants::TenantsHandle;
pub use wxhub_domain::{
    AccessError, Admitted, AppId, Client, Clock, FnClock, Secret, SecretUrl, SystemClock, Tenant,
    TenantId, TenantKind, Tenants, unix_ms,
};
pub use wxhub_domain::{clock, trace};
