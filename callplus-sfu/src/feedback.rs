//! An interceptor on every SFU connection that reads the subscriber's key-frame requests (PLI,
//! RFC 4585 §6.3.1, and FIR, RFC 5104 §4.3.1) about the streams forwarded to it.
//!
//! Inbound RTCP stops at the end of `rtc`'s interceptor chain and nothing in the default chain
//! acts on PLI/FIR (it has no encoder), so they are read here and handed to a callback with the
//! SSRC they are about; the SFU maps that SSRC back to the publisher's stream. NACKs are not read
//! here: the chain's NACK responder answers them from the connection's own packet cache.

use std::collections::VecDeque;
use std::time::Instant;

use rtc::interceptor::{Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::sansio::Protocol;
use rtc::shared::error::Error;

/// Called with (media SSRC asked about, arrival time). Runs on the connection's driver: it must
/// not block.
pub(crate) type KeyframeCallback = Box<dyn Fn(u32, Instant) + Send + Sync>;

/// Passes every packet through unchanged; key-frame requests also go to the callback.
pub(crate) struct KeyframeTap {
    on_request: KeyframeCallback,
    /// Last FIR sequence number per SSRC: a repeated FIR is one request (RFC 5104 §4.3.1.1).
    last_fir: Vec<(u32, u8)>,
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
}

impl KeyframeTap {
    pub(crate) fn new(on_request: KeyframeCallback) -> Self {
        KeyframeTap {
            on_request,
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

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeTap {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            let mut asked = Vec::new();
            for packet in packets {
                let any = packet.as_any();
                if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
                    asked.push(pli.media_ssrc);
                } else if let Some(fir) = any.downcast_ref::<FullIntraRequest>() {
                    for entry in &fir.fir {
                        if self.on_fir(entry.ssrc, entry.sequence_number) {
                            asked.push(entry.ssrc);
                        }
                    }
                }
            }
            for ssrc in asked {
                (self.on_request)(ssrc, msg.now);
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

impl Interceptor for KeyframeTap {
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
    fn pli_and_new_firs_reach_the_callback_and_everything_passes() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let mut tap = KeyframeTap::new(Box::new(move |ssrc, _| {
            if let Ok(mut s) = sink.lock() {
                s.push(ssrc);
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
        for packets in [vec![pli, fir(1)], vec![fir(1)], vec![fir(2)]] {
            let msg = TaggedPacket {
                now: Instant::now(),
                transport: TransportContext::default(),
                message: Packet::Rtcp(packets).into(),
            };
            assert!(tap.handle_read(msg).is_ok());
            assert!(tap.poll_read().is_some(), "the packet passes on");
        }
        assert_eq!(*seen.lock().map_err(|_| "poisoned").unwrap_or_else(|e| panic!("{e}")), vec![7, 9, 9]);
    }
}
