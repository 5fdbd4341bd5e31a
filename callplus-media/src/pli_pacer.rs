//! When to send a Picture Loss Indication (RTCP PLI, RFC 4585 §6.3.1) for a remote video stream
//! that cannot be decoded until its next key frame.
//!
//! The receive path asks on every packet while the stream needs a key frame; the pacer lets one
//! PLI through per *hold-off*: at least [`MIN_INTERVAL`], and at least twice the round-trip time,
//! so that no new request goes out while the key frame asked for may still be on its way (the
//! request travels half an RTT, the key frame is encoded and sent back in the other half plus a
//! frame interval or two). If the key frame is lost too, the next request follows one hold-off
//! later, for as long as undecodable video keeps arriving. Sans-IO: time is an argument.

use std::time::{Duration, Instant};

/// Least time between two PLIs for one stream.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_millis(500);
/// Longest hold-off, whatever the RTT estimate says.
pub(crate) const MAX_INTERVAL: Duration = Duration::from_secs(3);

/// The hold-off between two PLIs for one stream: twice the round trip, clamped to
/// [`MIN_INTERVAL`]–[`MAX_INTERVAL`].
pub(crate) fn pli_hold_off(rtt: Option<Duration>) -> Duration {
    rtt.map_or(MIN_INTERVAL, |rtt| rtt.saturating_mul(2)).clamp(MIN_INTERVAL, MAX_INTERVAL)
}

/// Lets one event through per hold-off: the PLIs of one remote stream here, and the key-frame
/// requests forwarded to our video source (`keyframe_requests`).
#[derive(Debug, Default)]
pub(crate) struct Pacer {
    last: Option<Instant>,
}

impl Pacer {
    /// A pacer that has let nothing through yet.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Whether to go now, at least `hold_off` after the last time; records it if so.
    pub(crate) fn poll(&mut self, now: Instant, hold_off: Duration) -> bool {
        if self.last.is_some_and(|last| now.saturating_duration_since(last) < hold_off) {
            return false;
        }
        self.last = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn one_pli_per_hold_off() {
        let mut p = Pacer::new();
        let t0 = Instant::now();
        assert!(p.poll(t0, pli_hold_off(None)), "the first request goes at once");
        assert!((1..50).all(|i| !p.poll(t0 + ms(i * 9), pli_hold_off(None))), "a key frame may be in flight");
        assert!(p.poll(t0 + MIN_INTERVAL, pli_hold_off(None)), "still undecodable: ask again");
        assert!(!p.poll(t0 + MIN_INTERVAL + ms(1), pli_hold_off(None)));
    }

    #[test]
    fn a_long_rtt_stretches_the_hold_off_up_to_the_cap() {
        let mut p = Pacer::new();
        let t0 = Instant::now();
        assert!(p.poll(t0, pli_hold_off(Some(ms(400)))));
        assert!(!p.poll(t0 + ms(700), pli_hold_off(Some(ms(400)))), "2 x RTT = 800 ms");
        assert!(p.poll(t0 + ms(800), pli_hold_off(Some(ms(400)))));
        let t1 = t0 + ms(800);
        assert!(!p.poll(t1 + ms(499), pli_hold_off(Some(ms(1)))), "never below MIN_INTERVAL");
        assert!(
            p.poll(t1 + MAX_INTERVAL, pli_hold_off(Some(Duration::from_secs(3600)))),
            "never above MAX_INTERVAL"
        );
    }
}
