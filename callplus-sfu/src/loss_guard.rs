//! Moves one subscriber of a simulcast video stream down to the tiny layer while its receiver
//! reports show more loss than repairs can hide, and back up once they have stayed clean.
//!
//! A viewer chooses a layer per publisher (`set_video_view(…, tiny)`); that choice is the
//! ceiling. A viewer whose downlink cannot carry the full layer loses packets faster than NACK
//! repairs them, and then asks for key frames it cannot receive either. The SFU reads the loss
//! each subscriber reports about the stream it forwards (the `fraction lost` of the RTCP report
//! block, RFC 3550 §6.4.1, over the last report interval) and caps that subscriber at the tiny
//! layer (a quarter of the pixels, a fraction of the bitrate) after [`LOSSY_REPORTS`] reports in
//! a row at or above [`DOWN_AT`]; the cap is lifted after [`CLEAN_FOR`] of reports below
//! [`CLEAN_BELOW`]. Other subscribers of the same stream are not affected. Sans-IO: time is an
//! argument.

use std::time::{Duration, Instant};

/// Loss (in 1/256, as reported) from which a report counts as lossy: about 10 %.
pub(crate) const DOWN_AT: u8 = 26;
/// Lossy reports in a row that cap the subscriber at the tiny layer.
pub(crate) const LOSSY_REPORTS: u8 = 2;
/// Loss (in 1/256) below which a report counts as clean: about 2 %.
pub(crate) const CLEAN_BELOW: u8 = 5;
/// How long reports must stay clean before the cap is lifted.
pub(crate) const CLEAN_FOR: Duration = Duration::from_secs(10);

/// One subscriber's view of one forwarded video stream.
#[derive(Debug, Default)]
pub(crate) struct LossGuard {
    /// Lossy reports in a row.
    lossy: u8,
    /// Since when the reports have been clean, while capped.
    clean_since: Option<Instant>,
    capped: bool,
    /// Times the cap was put on.
    pub(crate) caps: u64,
}

impl LossGuard {
    /// A report of `fraction_lost` (in 1/256) arrived at `now`: `Some(capped)` when the cap
    /// changes.
    pub(crate) fn on_report(&mut self, fraction_lost: u8, now: Instant) -> Option<bool> {
        if fraction_lost >= DOWN_AT {
            self.lossy = self.lossy.saturating_add(1);
            self.clean_since = None;
            if !self.capped && self.lossy >= LOSSY_REPORTS {
                self.capped = true;
                self.caps += 1;
                return Some(true);
            }
            return None;
        }
        self.lossy = 0;
        if !self.capped {
            return None;
        }
        if fraction_lost >= CLEAN_BELOW {
            self.clean_since = None;
            return None;
        }
        let since = *self.clean_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= CLEAN_FOR {
            self.capped = false;
            self.clean_since = None;
            return Some(false);
        }
        None
    }

    /// Whether the subscriber is held at the tiny layer.
    pub(crate) fn capped(&self) -> bool {
        self.capped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_lossy_reports_in_a_row_cap_one_does_not() {
        let t0 = Instant::now();
        let mut g = LossGuard::default();
        assert_eq!(g.on_report(40, t0), None, "one lossy report is not enough");
        assert_eq!(g.on_report(0, t0 + Duration::from_secs(1)), None, "the run is broken");
        assert_eq!(g.on_report(DOWN_AT, t0 + Duration::from_secs(2)), None);
        assert_eq!(g.on_report(DOWN_AT, t0 + Duration::from_secs(3)), Some(true));
        assert!(g.capped());
        assert_eq!(g.on_report(200, t0 + Duration::from_secs(4)), None, "already capped");
        assert_eq!(g.caps, 1);
    }

    #[test]
    fn the_cap_lifts_after_clean_reports_for_long_enough_and_a_lossy_one_restarts_the_wait() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut g = LossGuard::default();
        g.on_report(100, at(0));
        assert_eq!(g.on_report(100, at(1)), Some(true));
        assert_eq!(g.on_report(0, at(2)), None, "clean from here");
        assert_eq!(g.on_report(CLEAN_BELOW, at(8)), None, "some loss: not clean, the wait restarts");
        assert_eq!(g.on_report(0, at(9)), None);
        assert_eq!(g.on_report(1, at(18)), None, "9 s clean");
        assert_eq!(g.on_report(0, at(19)), Some(false), "10 s clean");
        assert!(!g.capped());
        assert_eq!(g.on_report(100, at(20)), None);
        assert_eq!(g.on_report(100, at(21)), Some(true), "capped again");
        assert_eq!(g.caps, 2);
    }
}
