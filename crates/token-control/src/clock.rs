//! The service's notion of "now" for token expiry, schedules and ticket age. Injectable so the
//! tests and the scale benchmark run on the simulator's virtual clock instead of sleeping.
//! (Lease TTLs are measured by Redis in real time; they are about process liveness.)

use std::sync::Arc;

/// Milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        wxhub_runtime::unix_ms()
    }
}

/// A clock from a closure, e.g. `FnClock::new(move || sim_clock.now_ms())`.
pub struct FnClock<F>(F);

impl<F: Fn() -> i64 + Send + Sync + 'static> FnClock<F> {
    /// Wraps `now_ms`.
    pub fn new(now_ms: F) -> Arc<Self> {
        Arc::new(Self(now_ms))
    }
}

impl<F: Fn() -> i64 + Send + Sync + 'static> Clock for FnClock<F> {
    fn now_ms(&self) -> i64 {
        (self.0)()
    }
}
