//! The driver's one timer for the switchboard's next deadline.
//!
//! The driver waits for its next input and for the switchboard's earliest deadline at once. A
//! new `Sleep` made for every input put an entry into the runtime's timer wheel and took it out
//! again when the input came first: several times per call cycle, for a deadline that had mostly
//! not moved. One `Sleep` is kept instead and moved only when the deadline changes; moving it
//! later, the common case as calls come and go, changes no wheel entry until it would fire.

use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::driver::unix_ms;

/// A timer set to the switchboard's `poll_timeout` (Unix milliseconds).
///
/// ```text
/// let mut timer = DeadlineTimer::new();
/// loop {
///     timer.set(switchboard.poll_timeout());
///     tokio::select! {
///         input = inputs.recv() => { /* handle it */ }
///         () = timer.fired() => switchboard.handle_timeout(unix_ms()),
///     }
/// }
/// ```
#[derive(Debug)]
pub(crate) struct DeadlineTimer {
    sleep: Pin<Box<Sleep>>,
    /// The deadline the sleep is set for; `None` when there is none, or once it has fired.
    armed: Option<i64>,
}

impl DeadlineTimer {
    pub(crate) fn new() -> Self {
        DeadlineTimer { sleep: Box::pin(tokio::time::sleep_until(Instant::now())), armed: None }
    }

    /// Sets the timer for `at` (Unix ms; `None`: no deadline). The same deadline as before
    /// leaves the timer as it is; a deadline that has fired is set again, and one already past
    /// fires at once.
    pub(crate) fn set(&mut self, at: Option<i64>) {
        if at == self.armed {
            return;
        }
        if let Some(at) = at {
            // The switchboard keeps the wall clock; the runtime's timers run on the monotonic one.
            let wait = u64::try_from(at.saturating_sub(unix_ms())).unwrap_or(0);
            self.sleep.as_mut().reset(Instant::now() + Duration::from_millis(wait));
        }
        self.armed = at;
    }

    /// Resolves once the deadline set is reached; never while none is set. Cancel-safe: dropped
    /// before it resolves, the timer stays set.
    pub(crate) async fn fired(&mut self) {
        if self.armed.is_none() {
            return std::future::pending().await;
        }
        self.sleep.as_mut().await;
        self.armed = None;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Whether the timer fires within `within` of the runtime's (paused, auto-advancing) clock.
    async fn fires_within(timer: &mut DeadlineTimer, within: Duration) -> bool {
        tokio::time::timeout(within, timer.fired()).await.is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn it_fires_at_the_deadline_set_and_not_before() {
        let mut timer = DeadlineTimer::new();
        timer.set(Some(unix_ms() + 1_000));
        assert!(!fires_within(&mut timer, Duration::from_millis(900)).await, "not before its deadline");
        assert!(fires_within(&mut timer, Duration::from_millis(200)).await, "at its deadline");
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_deadline_it_never_fires() {
        let mut timer = DeadlineTimer::new();
        timer.set(None);
        assert!(!fires_within(&mut timer, Duration::from_secs(3_600)).await);
        // A deadline set, then taken away.
        timer.set(Some(unix_ms() + 10));
        timer.set(None);
        assert!(!fires_within(&mut timer, Duration::from_secs(3_600)).await);
    }

    // The runtime's clock is paused and jumps ahead; the wall clock the deadlines are read
    // against does not, so every wait below is counted from the moment it is set.

    #[tokio::test(start_paused = true)]
    async fn a_moved_deadline_is_the_one_that_counts() {
        let mut timer = DeadlineTimer::new();
        timer.set(Some(unix_ms() + 1_000));
        // Later: the first deadline passes without firing.
        timer.set(Some(unix_ms() + 5_000));
        assert!(!fires_within(&mut timer, Duration::from_millis(2_000)).await);
        // Earlier again: the new deadline is the one that fires.
        timer.set(Some(unix_ms() + 1_500));
        assert!(!fires_within(&mut timer, Duration::from_millis(1_400)).await);
        assert!(fires_within(&mut timer, Duration::from_millis(200)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_that_fired_fires_again_when_set_again() {
        let mut timer = DeadlineTimer::new();
        let at = unix_ms() + 1_000;
        timer.set(Some(at));
        assert!(fires_within(&mut timer, Duration::from_millis(1_100)).await);
        // The switchboard may report the same deadline again when its clock read short of it
        // (here the wall clock has hardly moved): the timer waits for it again, counted afresh,
        // rather than firing at once, again and again, as a spent sleep would.
        timer.set(Some(at));
        assert!(!fires_within(&mut timer, Duration::from_millis(500)).await);
        assert!(fires_within(&mut timer, Duration::from_millis(1_000)).await);
        // Dropped before firing, the wait is kept: a deadline set once still fires.
        timer.set(Some(unix_ms() + 1_000));
        assert!(!fires_within(&mut timer, Duration::from_millis(10)).await);
        assert!(fires_within(&mut timer, Duration::from_millis(2_000)).await);
    }
}
