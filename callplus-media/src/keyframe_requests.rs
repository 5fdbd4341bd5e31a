//! Key-frame requests from a peer about the video we send: RTCP Picture Loss Indication (RFC 4585
//! §6.3.1) and Full Intra Request (RFC 5104 §4.3.1).
//!
//! A receiver that lost data it needs asks for a key frame, and keeps asking until one arrives:
//! one lost key frame can bring a burst of PLIs (and a peer may send PLI *and* FIR, or repeat a
//! FIR). An encoder cannot make more than one key frame per frame anyway, and each key frame is
//! several times the size of an inter frame, so the requests are coalesced: at most one is
//! forwarded to the video source per *window*, the round-trip time clamped to
//! [`MIN_WINDOW`]–[`MAX_WINDOW`]. Requests inside the window were sent before the peer could see
//! the key frame we are already making; if that key frame is lost too, the peer asks again after
//! the window. Sans-IO: time is an argument.

use std::time::{Duration, Instant};

use rtc::rtcp::Packet as RtcpPacket;

use crate::pli_pacer::Pacer;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;

/// Shortest coalescing window: a few frame intervals at common frame rates.
pub(crate) const MIN_WINDOW: Duration = Duration::from_millis(100);
/// Longest coalescing window, whatever the RTT estimate says.
pub(crate) const MAX_WINDOW: Duration = Duration::from_secs(1);

/// Reads key-frame requests for one video SSRC and decides which ones reach the source.
#[derive(Debug)]
pub(crate) struct KeyframeRequests {
    video_ssrc: u32,
    /// Sequence number of the last FIR honoured: a repeated FIR with the same number is a
    /// retransmission of one request (RFC 5104 §4.3.1.1).
    last_fir_seq: Option<u8>,
    forwarded: Pacer,
    /// Requests received since [`take_received`](Self::take_received).
    received: u32,
}

impl KeyframeRequests {
    /// Watches requests for our video stream `video_ssrc`.
    pub(crate) fn new(video_ssrc: u32) -> Self {
        KeyframeRequests { video_ssrc, last_fir_seq: None, forwarded: Pacer::new(), received: 0 }
    }

    /// Reads the packets of one compound RTCP packet; `true` when the video source should be
    /// asked for a key frame now.
    pub(crate) fn on_rtcp(
        &mut self,
        packets: &[Box<dyn RtcpPacket>],
        now: Instant,
        rtt: Option<Duration>,
    ) -> bool {
        let mut asked = false;
        for packet in packets {
            let any = packet.as_any();
            if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
                if pli.media_ssrc == self.video_ssrc {
                    self.received += 1;
                    asked = true;
                }
            } else if let Some(fir) = any.downcast_ref::<FullIntraRequest>() {
                for entry in fir.fir.iter().filter(|e| e.ssrc == self.video_ssrc) {
                    if self.last_fir_seq != Some(entry.sequence_number) {
                        self.last_fir_seq = Some(entry.sequence_number);
                        self.received += 1;
                        asked = true;
                    }
                }
            }
        }
        asked && self.forward(now, rtt)
    }

    /// Requests received since the last call (the stats interval's count).
    pub(crate) fn take_received(&mut self) -> u32 {
        std::mem::take(&mut self.received)
    }

    fn forward(&mut self, now: Instant, rtt: Option<Duration>) -> bool {
        self.forwarded.poll(now, rtt.unwrap_or(MIN_WINDOW).clamp(MIN_WINDOW, MAX_WINDOW))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::payload_feedbacks::full_intra_request::FirEntry;
    use rtc::rtcp::receiver_report::ReceiverReport;

    const OURS: u32 = 0xabcd;

    fn pli(media_ssrc: u32) -> Box<dyn RtcpPacket> {
        Box::new(PictureLossIndication { sender_ssrc: 1, media_ssrc })
    }

    fn fir(ssrc: u32, sequence_number: u8) -> Box<dyn RtcpPacket> {
        Box::new(FullIntraRequest {
            sender_ssrc: 1,
            media_ssrc: 0,
            fir: vec![FirEntry { ssrc, sequence_number }],
        })
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_burst_of_plis_is_one_request() {
        let mut k = KeyframeRequests::new(OURS);
        let t0 = Instant::now();
        assert!(k.on_rtcp(&[pli(OURS)], t0, None));
        for i in 1..10 {
            assert!(!k.on_rtcp(&[pli(OURS), pli(OURS)], t0 + ms(i * 9), None), "coalesced");
        }
        assert_eq!(k.take_received(), 19, "every request is counted");
        assert_eq!(k.take_received(), 0, "the count is per interval");
        // After the window the peer's next request is honoured.
        assert!(k.on_rtcp(&[pli(OURS)], t0 + MIN_WINDOW, None));
    }

    #[test]
    fn the_window_follows_the_rtt_within_bounds() {
        let mut k = KeyframeRequests::new(OURS);
        let t0 = Instant::now();
        assert!(k.on_rtcp(&[pli(OURS)], t0, Some(ms(300))));
        assert!(!k.on_rtcp(&[pli(OURS)], t0 + ms(250), Some(ms(300))));
        assert!(k.on_rtcp(&[pli(OURS)], t0 + ms(310), Some(ms(300))));
        // A tiny RTT still coalesces for MIN_WINDOW; an absurd one never blocks past MAX_WINDOW.
        assert!(!k.on_rtcp(&[pli(OURS)], t0 + ms(360), Some(ms(1))));
        assert!(k.on_rtcp(&[pli(OURS)], t0 + ms(410), Some(ms(1))));
        assert!(k.on_rtcp(&[pli(OURS)], t0 + ms(1410), Some(Duration::from_secs(60))));
    }

    #[test]
    fn requests_for_other_streams_and_other_packets_are_ignored() {
        let mut k = KeyframeRequests::new(OURS);
        let t0 = Instant::now();
        let rr: Box<dyn RtcpPacket> = Box::new(ReceiverReport::default());
        assert!(!k.on_rtcp(&[pli(OURS + 1), fir(OURS + 1, 0), rr], t0, None));
        assert_eq!(k.take_received(), 0);
        assert!(k.on_rtcp(&[pli(OURS)], t0, None), "nothing was forwarded before");
    }

    #[test]
    fn fir_counts_once_per_sequence_number() {
        let mut k = KeyframeRequests::new(OURS);
        let t0 = Instant::now();
        assert!(k.on_rtcp(&[fir(OURS, 7)], t0, None));
        // The same FIR again, after the window: a retransmission, not a new request.
        assert!(!k.on_rtcp(&[fir(OURS, 7)], t0 + ms(500), None));
        assert_eq!(k.take_received(), 1);
        assert!(k.on_rtcp(&[fir(OURS, 8)], t0 + ms(600), None));
        assert_eq!(k.take_received(), 1);
    }
}
