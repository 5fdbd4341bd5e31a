//! The engine's clock: monotonic milliseconds, seeded with the Unix time when the client
//! started so that readings look like timestamps.
//!
//! The engine's timers (heartbeat, liveness, request deadlines) are deadlines on this clock. It
//! follows `tokio::time::Instant`, never the wall clock after the start, so a device whose clock
//! is set forward by an hour does not see its healthy connection as silent and drop it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Monotonic milliseconds for the client engine.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EngineClock {
    origin: Instant,
    origin_ms: i64,
}

impl EngineClock {
    /// A clock that reads the Unix time now and counts monotonically from there.
    pub(crate) fn start() -> Self {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        EngineClock::starting_at(Instant::now(), unix_ms)
    }

    fn starting_at(origin: Instant, origin_ms: i64) -> Self {
        EngineClock { origin, origin_ms }
    }

    /// The engine time now.
    pub(crate) fn now_ms(&self) -> i64 {
        self.at(Instant::now())
    }

    /// The engine time at `instant`.
    fn at(&self, instant: Instant) -> i64 {
        let elapsed = instant.saturating_duration_since(self.origin);
        self.origin_ms.saturating_add(i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
    }

    /// The instant at which the engine time reaches `deadline_ms` (the origin for earlier ones).
    pub(crate) fn instant_at(&self, deadline_ms: i64) -> Instant {
        let after = u64::try_from(deadline_ms.saturating_sub(self.origin_ms)).unwrap_or(0);
        self.origin + Duration::from_millis(after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_follow_the_monotonic_clock_from_the_seed() {
        let origin = Instant::now();
        let clock = EngineClock::starting_at(origin, 1_700_000_000_000);
        assert_eq!(clock.at(origin), 1_700_000_000_000);
        assert_eq!(clock.at(origin + Duration::from_millis(1_500)), 1_700_000_001_500);
        // A deadline maps back to the instant it names, so timers fire on the monotonic clock.
        assert_eq!(clock.instant_at(1_700_000_020_000), origin + Duration::from_secs(20));
        assert_eq!(clock.instant_at(0), origin, "deadlines before the start are due at once");
    }
}
