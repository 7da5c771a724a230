//! A service's notion of "now" for protocol times: token expiry and schedules in token-control,
//! the `CreateTime` skew check in the gateway. Injectable so tests and benchmarks run on the
//! simulator's virtual clock instead of sleeping. (Lease TTLs and request deadlines are measured
//! in real time; they are about process liveness, not WeChat's clock.)

use std::sync::Arc;

/// Milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;

    /// Whole seconds since the Unix epoch.
    fn now_secs(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        unix_ms()
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

/// Unix time in milliseconds from the system clock.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_round_down_and_closures_are_clocks() {
        let clock: Arc<dyn Clock> = FnClock::new(|| 1_700_000_000_999);
        assert_eq!(clock.now_secs(), 1_700_000_000);
        assert_eq!(FnClock::new(|| -1).now_secs(), -1);
        assert!((SystemClock.now_ms() - unix_ms()).abs() < 1000);
    }
}
