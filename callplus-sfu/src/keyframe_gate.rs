//! Key-frame requests from subscribers, rate-limited per subscriber before they reach the
//! publisher.
//!
//! A subscriber that cannot decode (it joined mid-stream, or lost a packet NACK could not bring
//! back) sends PLI or FIR about the forwarded stream, and keeps sending until a key frame comes.
//! Every key frame costs the publisher's uplink several inter frames and reaches *every*
//! subscriber, so each subscriber's requests pass at most once per [`MIN_INTERVAL`]: one viewer
//! on a bad link cannot make the publisher send key frames back to back, and the others' requests
//! are not held behind it. Sans-IO: time is an argument.

use std::time::{Duration, Instant};

/// Shortest time between two requests of one subscriber forwarded for one stream.
pub const MIN_INTERVAL: Duration = Duration::from_millis(500);

/// The gate of one subscriber for one forwarded video stream.
#[derive(Debug, Default)]
pub(crate) struct KeyframeGate {
    last: Option<Instant>,
    /// Requests received and not forwarded (for the logs and tests).
    pub(crate) held: u64,
    /// Requests forwarded to the publisher.
    pub(crate) forwarded: u64,
}

impl KeyframeGate {
    /// A request arrived at `now`: `true` when it goes to the publisher.
    pub(crate) fn allow(&mut self, now: Instant) -> bool {
        if self.last.is_some_and(|last| now.saturating_duration_since(last) < MIN_INTERVAL) {
            self.held += 1;
            return false;
        }
        self.last = Some(now);
        self.forwarded += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_request_per_interval_passes() {
        let mut gate = KeyframeGate::default();
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let passed: Vec<bool> =
            [0, 10, 200, 499, 500, 600, 1200].into_iter().map(|t| gate.allow(ms(t))).collect();
        assert_eq!(passed, [true, false, false, false, true, false, true]);
        assert_eq!((gate.forwarded, gate.held), (3, 4));
    }

    #[test]
    fn subscribers_do_not_share_a_gate() {
        let (mut noisy, mut quiet) = (KeyframeGate::default(), KeyframeGate::default());
        let t0 = Instant::now();
        assert!(noisy.allow(t0));
        assert!(!noisy.allow(t0 + Duration::from_millis(5)));
        assert!(quiet.allow(t0 + Duration::from_millis(5)), "another viewer's request still passes");
    }
}
