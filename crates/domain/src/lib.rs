//! The vocabulary every wxhub crate shares, light enough for every leaf crate to depend on.
//!
//! - [`id`]: [`TenantId`] and [`AppId`], each with the one validation rule that holds wherever
//!   such an id enters (a URL path, a gRPC request, the tenants file).
//! - [`tenants`]: the tenants-and-clients file, parsed and validated into [`Tenants`], with
//!   API-key authentication of internal clients.
//! - [`secret`]: [`Secret`] and [`SecretUrl`], which never print their value.
//! - [`config`]: [`ConfigError`], the one error of configuration, and the checks sections share.
//! - [`clock`]: the injectable "now" of protocol times.
//! - [`trace`]: W3C trace context in and out of headers, so a callback or a job is one trace.
//!
//! Depends on no wxhub crate but `wxhub-crypto` (a tenant carries its parsed keys), and on no
//! I/O runtime (no tokio, axum, tonic, redis, lapin, figment; only OpenTelemetry's API for the trace
//! context): the crates of the bus, the store
//! and the WeChat API build on it without pulling in the service kit.

pub mod clock;
pub mod config;
pub mod id;
pub mod secret;
pub mod tenants;
pub mod trace;

pub use clock::{Clock, FnClock, SystemClock, unix_ms};
pub use config::ConfigError;
pub use id::{AppId, IdError, TenantId};
pub use secret::{Secret, SecretUrl};
pub use tenants::{
    AccessError, Admitted, Client, Scope, Tenant, TenantKind, Tenants, TenantsError,
    api_key_sha256, bearer_key,
};
