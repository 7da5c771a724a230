//! The service kit every wxhub binary shares.
//!
//! - [`config`]: layered configuration (embedded defaults → `--config` file / `WXHUB_CONFIG` →
//!   `WXHUB_<SECTION>__<KEY>` environment), secrets that never print, `--dump-config`.
//! - [`tenants`]: the tenants-and-clients file (design §3), validated, hot-reloaded, with API-key
//!   authentication of internal clients.
//! - [`telemetry`]: tracing subscriber (text or JSON), optional OTLP export, W3C trace-context
//!   propagation helpers for HTTP and AMQP headers.
//! - [`ops`]: Prometheus `/metrics`, `/healthz`, `/readyz` (ready, degraded or unready per check).
//! - [`clock`]: the injectable "now" of protocol times (the simulator's virtual clock in tests).
//! - [`shutdown`]: SIGTERM/SIGINT into a `CancellationToken`, bounded drains.
//! - [`service`]: the shared `main` of every binary (flags, config errors, telemetry, signals).
//! - [`ErrorCode`]: one table mapping error classes to HTTP statuses and gRPC codes.
//!
//! Depends on no other wxhub crate but `wxhub-crypto` (tenants carry parsed keys); service crates
//! depend on this one, never the reverse.

pub mod clock;
pub mod config;
mod error;
pub mod ops;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod tenants;

pub use clock::{Clock, FnClock, SystemClock};
pub use config::{Secret, SecretUrl};
pub use error::ErrorCode;
pub use tenants::{Client, Tenant, TenantId, TenantKind, Tenants, TenantsHandle};

/// Unix time in milliseconds from the system clock.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
