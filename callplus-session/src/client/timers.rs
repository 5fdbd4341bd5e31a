//! The client engine's timer table: one deadline slot per kind of timer, on the engine's
//! monotonic clock (after `quinn-proto`'s `TimerTable`).
//!
//! Every deadline is a reading of the same clock the driver passes as `now_ms`, which must never
//! go backwards and must not follow wall-clock changes (see
//! [`ClientEngine`](super::ClientEngine)'s "Time" section): a wall clock set forward by an hour
//! would otherwise fire the liveness timer at once and drop a healthy connection.

/// What a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timer {
    /// A Hello was sent; no Welcome came yet. Fires: the transport is stale.
    Hello,
    /// The next heartbeat (Ping) is due.
    Heartbeat,
    /// Received frames must be acked (by a Ping when nothing else went out).
    Ack,
    /// The server has been silent this long: the transport is stale.
    Liveness,
}

impl Timer {
    fn slot(self) -> usize {
        match self {
            Timer::Hello => 0,
            Timer::Heartbeat => 1,
            Timer::Ack => 2,
            Timer::Liveness => 3,
        }
    }
}

/// One optional deadline per [`Timer`].
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct TimerTable {
    deadlines: [Option<i64>; 4],
}

impl TimerTable {
    pub(super) fn set(&mut self, timer: Timer, at: i64) {
        self.deadlines[timer.slot()] = Some(at);
    }

    pub(super) fn stop(&mut self, timer: Timer) {
        self.deadlines[timer.slot()] = None;
    }

    pub(super) fn get(&self, timer: Timer) -> Option<i64> {
        self.deadlines[timer.slot()]
    }

    pub(super) fn is_set(&self, timer: Timer) -> bool {
        self.get(timer).is_some()
    }

    /// Whether `timer` is set and due at `now`.
    pub(super) fn is_due(&self, timer: Timer, now: i64) -> bool {
        self.get(timer).is_some_and(|at| at <= now)
    }

    /// Stops every timer (the transport is gone).
    pub(super) fn stop_all(&mut self) {
        self.deadlines = [None; 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_independent_and_setting_again_replaces_the_deadline() {
        let mut t = TimerTable::default();
        t.set(Timer::Liveness, 30);
        t.set(Timer::Heartbeat, 10);
        t.set(Timer::Ack, 20);
        assert!(t.is_due(Timer::Heartbeat, 10) && !t.is_due(Timer::Ack, 10));
        assert!(!t.is_due(Timer::Hello, 1_000), "an unset timer is never due");
        t.stop(Timer::Heartbeat);
        assert!(!t.is_due(Timer::Heartbeat, 10) && t.get(Timer::Ack) == Some(20));
        t.set(Timer::Ack, 40);
        assert_eq!(t.get(Timer::Ack), Some(40));
        t.stop_all();
        assert!(!t.is_set(Timer::Liveness) && !t.is_set(Timer::Ack));
    }
}
