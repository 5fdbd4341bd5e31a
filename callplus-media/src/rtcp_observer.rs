//! An interceptor that reads the peer's RTCP about our streams: reception reports and key-frame
//! requests.
//!
//! `rtc` 0.21.1 feeds only RTCP *receiver* reports into its remote-inbound stats, and computes no
//! RTT from them; a peer that also sends (every call here) reports in the blocks of its *sender*
//! reports instead. This observer reads both kinds, and measures RTT from the LSR/DLSR fields
//! against the sender reports we sent (RFC 3550 §6.4.1).
//!
//! Nothing in `rtc`'s default chain acts on PLI/FIR (it cannot: it has no encoder), and inbound
//! RTCP never reaches the application on its own, so the key-frame requests for our video are
//! read here too ([`KeyframeRequests`] coalesces them) and handed to a callback that asks the
//! video source for a key frame.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtc::interceptor::{Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::reception_report::ReceptionReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::sansio::Protocol;
use rtc::shared::error::Error;

use crate::keyframe_requests::KeyframeRequests;
use crate::source::VideoLayer;

/// Sender reports remembered for RTT matching.
const SENT_SR_MEMORY: usize = 32;

/// What the observer learned since the stats task last took it.
#[derive(Debug)]
pub(crate) struct RemoteReports {
    /// Sum of the reported loss fractions (0–1) and their number.
    pub(crate) fraction_sum: f64,
    pub(crate) fraction_n: u32,
    /// The latest RTT measured from a report.
    pub(crate) rtt: Option<Duration>,
    /// The ICE candidate pair's RTT, as the stats task last read it: the fallback while no
    /// report gave one (we send the peer nothing, or not yet).
    pub(crate) ice_rtt: Option<Duration>,
    /// (middle 32 bits of the NTP time, when sent) of our recent sender reports.
    sent: VecDeque<(u32, Instant)>,
    /// Key-frame requests for our video stream.
    pub(crate) keyframes: KeyframeRequests,
    /// Key-frame requests for the tiny layer of our video (simulcast, through the SFU).
    pub(crate) tiny_keyframes: Option<KeyframeRequests>,
}

impl RemoteReports {
    /// Nothing learned yet; `video_ssrc` is the SSRC of the video we send to this peer.
    pub(crate) fn new(video_ssrc: u32) -> Self {
        RemoteReports {
            fraction_sum: 0.0,
            fraction_n: 0,
            rtt: None,
            ice_rtt: None,
            sent: VecDeque::new(),
            keyframes: KeyframeRequests::new(video_ssrc),
            tiny_keyframes: None,
        }
    }

    /// Also watches the key-frame requests for the tiny layer we send as `tiny_ssrc`.
    pub(crate) fn with_tiny_layer(mut self, tiny_ssrc: u32) -> Self {
        self.tiny_keyframes = Some(KeyframeRequests::new(tiny_ssrc));
        self
    }

    /// Key-frame requests received since the last call, both layers.
    pub(crate) fn take_keyframe_requests(&mut self) -> u32 {
        self.keyframes.take_received() + self.tiny_keyframes.as_mut().map_or(0, |k| k.take_received())
    }

    /// Takes the loss average of the interval (percent) and the latest RTT.
    pub(crate) fn take(&mut self) -> (Option<f64>, Option<Duration>) {
        let loss = (self.fraction_n > 0).then(|| self.fraction_sum / f64::from(self.fraction_n) * 100.0);
        self.fraction_sum = 0.0;
        self.fraction_n = 0;
        (loss, self.rtt)
    }

    /// The best round-trip time known: from the reports, else from ICE.
    pub(crate) fn rtt_estimate(&self) -> Option<Duration> {
        self.rtt.or(self.ice_rtt)
    }

    fn on_block(&mut self, block: &ReceptionReport, now: Instant) {
        self.fraction_sum += f64::from(block.fraction_lost) / 256.0;
        self.fraction_n += 1;
        if block.last_sender_report == 0 {
            return;
        }
        if let Some(&(_, sent)) = self.sent.iter().find(|(lsr, _)| *lsr == block.last_sender_report) {
            let delay = Duration::from_secs_f64(f64::from(block.delay) / 65536.0);
            if let Some(rtt) = now.checked_duration_since(sent).and_then(|d| d.checked_sub(delay)) {
                self.rtt = Some(rtt);
            }
        }
    }
}

/// Called when the peer asked for a key frame of (a layer of) our video (already coalesced).
/// Runs on the connection's driver: it must not block.
pub(crate) type KeyframeCallback = Box<dyn Fn(VideoLayer) + Send + Sync>;

/// Passes every packet through unchanged, recording reports into the shared [`RemoteReports`]
/// and forwarding key-frame requests to a callback.
pub(crate) struct RtcpObserver {
    shared: Arc<Mutex<RemoteReports>>,
    on_keyframe_request: KeyframeCallback,
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
}

impl RtcpObserver {
    pub(crate) fn new(shared: Arc<Mutex<RemoteReports>>, on_keyframe_request: KeyframeCallback) -> Self {
        RtcpObserver {
            shared,
            on_keyframe_request,
            read_queue: VecDeque::new(),
            write_queue: VecDeque::new(),
        }
    }

    fn reports(&self) -> std::sync::MutexGuard<'_, RemoteReports> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for RtcpObserver {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            let mut reports = self.reports();
            let rtt = reports.rtt_estimate();
            let keyframe = reports.keyframes.on_rtcp(packets, msg.now, rtt);
            let tiny = reports.tiny_keyframes.as_mut().is_some_and(|k| k.on_rtcp(packets, msg.now, rtt));
            for packet in packets {
                let any = packet.as_any();
                let blocks = if let Some(sr) = any.downcast_ref::<SenderReport>() {
                    &sr.reports
                } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                    &rr.reports
                } else {
                    continue;
                };
                for block in blocks {
                    reports.on_block(block, msg.now);
                }
            }
            drop(reports);
            if keyframe {
                tracing::debug!("peer asked for a key frame");
                (self.on_keyframe_request)(VideoLayer::Full);
            }
            if tiny {
                tracing::debug!("peer asked for a key frame of the tiny layer");
                (self.on_keyframe_request)(VideoLayer::Tiny);
            }
        }
        self.read_queue.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            let mut reports = self.reports();
            for packet in packets {
                if let Some(sr) = packet.as_any().downcast_ref::<SenderReport>() {
                    let middle = ((sr.ntp_time >> 16) & 0xffff_ffff) as u32;
                    reports.sent.push_back((middle, msg.now));
                    if reports.sent.len() > SENT_SR_MEMORY {
                        reports.sent.pop_front();
                    }
                }
            }
        }
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write_queue.pop_front()
    }
}

impl Interceptor for RtcpObserver {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
    use rtc::shared::TransportContext;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn rtcp(now: Instant, packets: Vec<Box<dyn rtc::rtcp::Packet>>) -> TaggedPacket {
        TaggedPacket { now, transport: TransportContext::default(), message: Packet::Rtcp(packets).into() }
    }

    #[test]
    fn key_frame_requests_reach_the_callback_coalesced_and_pass_through() {
        let reports = Arc::new(Mutex::new(RemoteReports::new(42)));
        let calls = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&calls);
        let mut observer = RtcpObserver::new(
            Arc::clone(&reports),
            Box::new(move |_| {
                counter.fetch_add(1, Ordering::Relaxed);
            }),
        );
        let t0 = Instant::now();
        let pli = |media_ssrc| -> Box<dyn rtc::rtcp::Packet> {
            Box::new(PictureLossIndication { sender_ssrc: 7, media_ssrc })
        };
        for (i, at) in [0u64, 20, 40].into_iter().enumerate() {
            let now = t0 + Duration::from_millis(at);
            observer.handle_read(rtcp(now, vec![pli(42), pli(43)])).unwrap_or_default();
            let passed =
                observer.poll_read().map(|m| matches!(m.message.packet, Packet::Rtcp(p) if p.len() == 2));
            assert_eq!(passed, Some(true), "packet {i} passes unchanged");
        }
        assert_eq!(calls.load(Ordering::Relaxed), 1, "one burst, one request");
        assert_eq!(reports.lock().map(|mut r| r.keyframes.take_received()).unwrap_or_default(), 3);
    }

    #[test]
    fn loss_and_rtt_from_report_blocks() {
        let mut reports = RemoteReports::new(1);
        reports.ice_rtt = Some(Duration::from_millis(3));
        assert_eq!(reports.rtt_estimate(), reports.ice_rtt, "ICE until a report measures it");
        let t0 = Instant::now();
        reports.sent.push_back((0x1234_5678, t0));
        // Received 50 ms after our SR, of which the peer held it 10 ms: RTT 40 ms.
        let block = ReceptionReport {
            fraction_lost: 64,
            last_sender_report: 0x1234_5678,
            delay: 655, // 10 ms in 1/65536 s
            ..Default::default()
        };
        reports.on_block(&block, t0 + Duration::from_millis(50));
        reports.on_block(&ReceptionReport { fraction_lost: 0, ..Default::default() }, t0);
        let (loss, rtt) = reports.take();
        assert_eq!(loss, Some(12.5));
        let rtt = rtt.unwrap_or_default().as_secs_f64() * 1000.0;
        assert!((39.0..41.0).contains(&rtt), "{rtt}");
        assert_eq!(reports.rtt_estimate(), reports.rtt, "the report's RTT comes first");
        assert_eq!(reports.take().0, None, "loss is per interval");
    }
}
