//! An interceptor on every SFU connection that reads what the subscriber reports about the
//! streams forwarded to it: its key-frame requests (PLI, RFC 4585 §6.3.1, and FIR, RFC 5104
//! §4.3.1) and the loss in its report blocks (RFC 3550 §6.4, in receiver and sender reports).
//!
//! Inbound RTCP stops at the end of `rtc`'s interceptor chain and nothing in the default chain
//! acts on these (it has no encoder, and no layers to choose), so they are read here and handed
//! to a callback with the SSRC they are about; the SFU maps that SSRC back to the publisher's
//! stream. NACKs are not read here: the chain's NACK responder answers them from the
//! connection's own packet cache.

use std::collections::VecDeque;
use std::time::Instant;

use rtc::interceptor::{Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::reception_report::ReceptionReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::sansio::Protocol;
use rtc::shared::error::Error;

/// What a subscriber said about one stream forwarded to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Feedback {
    /// It asks for a key frame of the stream with this SSRC.
    Keyframe { ssrc: u32 },
    /// It lost `fraction_lost`/256 of the stream's packets over its last report interval.
    Loss { ssrc: u32, fraction_lost: u8 },
}

/// Called with what was said and when it arrived. Runs on the connection's driver: it must not
/// block.
pub(crate) type FeedbackCallback = Box<dyn Fn(Feedback, Instant) + Send + Sync>;

/// Passes every packet through unchanged; key-frame requests and losses also go to the
/// callback.
pub(crate) struct FeedbackTap {
    on_feedback: FeedbackCallback,
    /// Last FIR sequence number per SSRC: a repeated FIR is one request (RFC 5104 §4.3.1.1).
    last_fir: Vec<(u32, u8)>,
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
}

impl FeedbackTap {
    pub(crate) fn new(on_feedback: FeedbackCallback) -> Self {
        FeedbackTap {
            on_feedback,
            last_fir: Vec::new(),
            read_queue: VecDeque::new(),
            write_queue: VecDeque::new(),
        }
    }

    fn on_fir(&mut self, ssrc: u32, seq: u8) -> bool {
        match self.last_fir.iter_mut().find(|(s, _)| *s == ssrc) {
            Some((_, last)) if *last == seq => false,
            Some((_, last)) => {
                *last = seq;
                true
            }
            None => {
                self.last_fir.push((ssrc, seq));
                true
            }
        }
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for FeedbackTap {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            let mut said = Vec::new();
            let losses = |blocks: &[ReceptionReport], said: &mut Vec<Feedback>| {
                said.extend(
                    blocks.iter().map(|b| Feedback::Loss { ssrc: b.ssrc, fraction_lost: b.fraction_lost }),
                );
            };
            for packet in packets {
                let any = packet.as_any();
                if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
                    said.push(Feedback::Keyframe { ssrc: pli.media_ssrc });
                } else if let Some(fir) = any.downcast_ref::<FullIntraRequest>() {
                    for entry in &fir.fir {
                        if self.on_fir(entry.ssrc, entry.sequence_number) {
                            said.push(Feedback::Keyframe { ssrc: entry.ssrc });
                        }
                    }
                } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                    losses(&rr.reports, &mut said);
                } else if let Some(sr) = any.downcast_ref::<SenderReport>() {
                    losses(&sr.reports, &mut said);
                }
            }
            for feedback in said {
                (self.on_feedback)(feedback, msg.now);
            }
        }
        self.read_queue.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write_queue.pop_front()
    }
}

impl Interceptor for FeedbackTap {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::payload_feedbacks::full_intra_request::FirEntry;
    use rtc::shared::TransportContext;
    use std::sync::{Arc, Mutex};

    #[test]
    fn pli_new_firs_and_report_losses_reach_the_callback_and_everything_passes() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let mut tap = FeedbackTap::new(Box::new(move |feedback, _| {
            if let Ok(mut s) = sink.lock() {
                s.push(feedback);
            }
        }));
        let fir = |seq| -> Box<dyn rtc::rtcp::Packet> {
            Box::new(FullIntraRequest {
                sender_ssrc: 1,
                media_ssrc: 0,
                fir: vec![FirEntry { ssrc: 9, sequence_number: seq }],
            })
        };
        let pli: Box<dyn rtc::rtcp::Packet> =
            Box::new(PictureLossIndication { sender_ssrc: 1, media_ssrc: 7 });
        let rr: Box<dyn rtc::rtcp::Packet> = Box::new(ReceiverReport {
            ssrc: 1,
            reports: vec![ReceptionReport { ssrc: 7, fraction_lost: 64, ..ReceptionReport::default() }],
            ..ReceiverReport::default()
        });
        let sr: Box<dyn rtc::rtcp::Packet> = Box::new(SenderReport {
            ssrc: 1,
            reports: vec![ReceptionReport { ssrc: 9, fraction_lost: 3, ..ReceptionReport::default() }],
            ..SenderReport::default()
        });
        for packets in [vec![pli, fir(1)], vec![fir(1)], vec![fir(2)], vec![rr, sr]] {
            let msg = TaggedPacket {
                now: Instant::now(),
                transport: TransportContext::default(),
                message: Packet::Rtcp(packets).into(),
            };
            assert!(tap.handle_read(msg).is_ok());
            assert!(tap.poll_read().is_some(), "the packet passes on");
        }
        let want = vec![
            Feedback::Keyframe { ssrc: 7 },
            Feedback::Keyframe { ssrc: 9 },
            Feedback::Keyframe { ssrc: 9 },
            Feedback::Loss { ssrc: 7, fraction_lost: 64 },
            Feedback::Loss { ssrc: 9, fraction_lost: 3 },
        ];
        assert_eq!(*seen.lock().map_err(|_| "poisoned").unwrap_or_else(|e| panic!("{e}")), want);
    }
}
