//! An interceptor that reads the peer's reception reports about our streams.
//!
//! `rtc` 0.21.1 feeds only RTCP *receiver* reports into its remote-inbound stats, and computes no
//! RTT from them; a peer that also sends (every call here) reports in the blocks of its *sender*
//! reports instead. This observer reads both kinds, and measures RTT from the LSR/DLSR fields
//! against the sender reports we sent (RFC 3550 §6.4.1).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtc::interceptor::{Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::reception_report::ReceptionReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::sansio::Protocol;
use rtc::shared::error::Error;

/// Sender reports remembered for RTT matching.
const SENT_SR_MEMORY: usize = 32;

/// What the observer learned since the stats task last took it.
#[derive(Debug, Default)]
pub(crate) struct RemoteReports {
    /// Sum of the reported loss fractions (0–1) and their number.
    pub(crate) fraction_sum: f64,
    pub(crate) fraction_n: u32,
    /// The latest RTT measured from a report.
    pub(crate) rtt: Option<Duration>,
    /// (middle 32 bits of the NTP time, when sent) of our recent sender reports.
    sent: VecDeque<(u32, Instant)>,
}

impl RemoteReports {
    /// Takes the loss average of the interval (percent) and the latest RTT.
    pub(crate) fn take(&mut self) -> (Option<f64>, Option<Duration>) {
        let loss = (self.fraction_n > 0).then(|| self.fraction_sum / f64::from(self.fraction_n) * 100.0);
        self.fraction_sum = 0.0;
        self.fraction_n = 0;
        (loss, self.rtt)
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

/// Passes every packet through unchanged, recording reports into the shared [`RemoteReports`].
pub(crate) struct ReportObserver {
    shared: Arc<Mutex<RemoteReports>>,
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
}

impl ReportObserver {
    pub(crate) fn new(shared: Arc<Mutex<RemoteReports>>) -> Self {
        ReportObserver { shared, read_queue: VecDeque::new(), write_queue: VecDeque::new() }
    }

    fn reports(&self) -> std::sync::MutexGuard<'_, RemoteReports> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for ReportObserver {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            let mut reports = self.reports();
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

impl Interceptor for ReportObserver {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_and_rtt_from_report_blocks() {
        let mut reports = RemoteReports::default();
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
        assert_eq!(reports.take().0, None, "loss is per interval");
    }
}
