//! Sim time: the wall clock plus an offset that only tests move.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

/// China Standard Time (UTC+8): WeChat's daily quotas reset at its midnight.
const CST_OFFSET_MS: i64 = 8 * 3600 * 1000;
const DAY_MS: i64 = 86_400_000;

/// A clock that runs with the wall clock and can be moved forward without sleeping.
///
/// Every expiry in the sim (tokens, tickets, codes, quotas, the 48-hour window) is measured on
/// this clock; [`VirtualClock::advance`] moves only the offset, so real time keeps flowing.
#[derive(Debug, Default)]
pub struct VirtualClock {
    offset_ms: AtomicI64,
    moved: Notify,
}

impl VirtualClock {
    /// A clock equal to the wall clock.
    pub fn new() -> Self {
        Self::default()
    }

    /// Real wall-clock milliseconds since the Unix epoch (no offset).
    pub fn wall_ms() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }

    /// Sim milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        Self::wall_ms().saturating_add(self.offset_ms.load(Ordering::Relaxed))
    }

    /// Sim seconds since the Unix epoch (what `CreateTime` carries).
    pub fn now_secs(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }

    /// How far sim time is ahead of the wall clock.
    pub fn offset(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.offset_ms.load(Ordering::Relaxed)).unwrap_or(0))
    }

    /// Moves sim time forward by `by` and wakes every task waiting on [`VirtualClock::moved`].
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        let _ = self
            .offset_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |o| {
                Some(o.saturating_add(ms).min(i64::MAX / 4))
            });
        self.moved.notify_waiters();
    }

    /// Resolves at the next [`VirtualClock::advance`].
    pub async fn moved(&self) {
        self.moved.notified().await;
    }

    pub(crate) fn moved_notify(&self) -> &Notify {
        &self.moved
    }

    /// The sim day number in China Standard Time (changes at virtual midnight, UTC+8).
    pub fn cst_day(&self) -> i64 {
        cst_day_of(self.now_ms())
    }

    /// The sim month (`year * 12 + month0`) in China Standard Time.
    pub fn cst_month(&self) -> i64 {
        let (y, m, _) = civil_from_days(cst_day_of(self.now_ms()));
        y * 12 + i64::from(m) - 1
    }
}

/// The CST day number of a Unix-epoch millisecond instant.
pub(crate) fn cst_day_of(ms: i64) -> i64 {
    (ms + CST_OFFSET_MS).div_euclid(DAY_MS)
}

/// Howard Hinnant's days-to-civil: day 0 = 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_moves_only_the_offset() {
        let clock = VirtualClock::new();
        let before = clock.now_ms();
        clock.advance(Duration::from_secs(3600));
        let after = clock.now_ms();
        assert!(after - before >= 3_600_000);
        assert!(after - before < 3_660_000);
        assert_eq!(clock.offset(), Duration::from_secs(3600));
    }

    #[test]
    fn cst_midnight_is_16_utc() {
        // 2024-01-01T15:59:59Z is still Jan 1st in CST; 16:00:00Z is Jan 2nd.
        let before = 1_704_124_799_000;
        assert_eq!(cst_day_of(before) + 1, cst_day_of(before + 1000));
        assert_eq!(civil_from_days(cst_day_of(before)), (2024, 1, 1));
        assert_eq!(civil_from_days(cst_day_of(before + 1000)), (2024, 1, 2));
    }
}
