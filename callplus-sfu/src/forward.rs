//! Forwarding one published track: every RTP packet from the publisher goes, unchanged but for
//! its SSRC, to each subscriber's outgoing track. Nothing is decoded.
//!
//! Each subscriber's copy goes through its own bounded queue and writer task: writing to a
//! connection waits when that connection's driver is behind, and a subscriber on a slow path must
//! not hold up the other subscribers of the stream. A full queue drops the packet (counted); the
//! subscriber's NACK or key-frame request repairs it as any loss.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use callplus_session::{DeviceId, UserId};
use rtc::rtp;
use tokio::sync::mpsc;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};

/// Packets a subscriber's copy of one stream may have waiting: about a second of 500 kbit/s video.
pub(crate) const QUEUE: usize = 512;

/// One subscriber's copy of a published stream.
pub(crate) struct Target {
    queue: mpsc::Sender<rtp::Packet>,
    /// The SSRC of the stream on the subscriber's connection.
    pub(crate) ssrc: u32,
    /// Packets dropped because the queue was full, shared by all targets of the SFU.
    dropped: Arc<AtomicU64>,
    /// Set once the subscriber applied an offer naming this stream. Packets sent before that
    /// reach a browser as an unsignalled SSRC, which Chromium may bind to the wrong receiver
    /// and then never deliver the stream.
    live: AtomicBool,
}

impl Target {
    /// A target writing to `track`; its writer task ends when the target is dropped.
    pub(crate) fn spawn(track: Arc<TrackLocalStaticRTP>, ssrc: u32, dropped: Arc<AtomicU64>) -> Arc<Target> {
        let (queue, mut packets) = mpsc::channel::<rtp::Packet>(QUEUE);
        tokio::spawn(async move {
            while let Some(packet) = packets.recv().await {
                if let Err(e) = track.write_rtp(packet).await {
                    // Before the subscriber's answer binds the track, or after it left.
                    tracing::trace!(error = %e, "packet not forwarded");
                }
            }
        });
        Arc::new(Target { queue, ssrc, dropped, live: AtomicBool::new(false) })
    }

    /// Starts forwarding: the subscriber's answer to an offer carrying this stream is in.
    pub(crate) fn go_live(&self) {
        self.live.store(true, Ordering::Release);
    }

    /// Queues a copy of `packet` for the subscriber without waiting; `false` when it was dropped
    /// (queue full, or the subscriber is gone).
    pub(crate) fn offer(&self, packet: &rtp::Packet) -> bool {
        if !self.live.load(Ordering::Acquire) {
            return false;
        }
        let mut copy = packet.clone();
        copy.header.ssrc = self.ssrc;
        copy.header.extension = false;
        copy.header.extension_profile = 0;
        copy.header.extensions.clear();
        match self.queue.try_send(copy) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// The subscribers of one published stream, by (user, device).
pub(crate) type Fanout = RwLock<HashMap<(UserId, DeviceId), Arc<Target>>>;

/// Reads the publisher's track until it ends and offers each packet to every subscriber.
///
/// Sequence numbers and timestamps stay the publisher's, so a subscriber's NACK names the same
/// packet the SFU asks the publisher for. Header extensions are dropped: their ids were
/// negotiated on the publisher's connection, not the subscriber's.
pub(crate) async fn forward(track: Arc<dyn TrackRemote>, fanout: Arc<Fanout>) {
    while let Some(event) = track.poll().await {
        match event {
            TrackRemoteEvent::OnRtpPacket(packet) => {
                let fanout = fanout.read().unwrap_or_else(|p| p.into_inner());
                for target in fanout.values() {
                    target.offer(&packet);
                }
            }
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_instead_of_waiting_and_counts() {
        let (queue, mut rx) = mpsc::channel(2);
        let dropped = Arc::new(AtomicU64::new(0));
        let target = Target { queue, ssrc: 77, dropped: Arc::clone(&dropped), live: AtomicBool::new(false) };
        let mut packet = rtp::Packet::default();
        packet.header.ssrc = 5;
        packet.header.sequence_number = 9;
        packet.header.extension = true;
        assert!(!target.offer(&packet), "nothing goes before the subscriber knows the stream");
        assert_eq!(dropped.load(Ordering::Relaxed), 0, "held back is not a queue drop");
        target.go_live();
        let offered: Vec<bool> = (0..3).map(|_| target.offer(&packet)).collect();
        assert_eq!(offered, [true, true, false], "the third finds the queue full and does not wait");
        assert_eq!(dropped.load(Ordering::Relaxed), 1);
        let copy = rx.try_recv().map_err(|e| e.to_string());
        let copy = copy.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((copy.header.ssrc, copy.header.sequence_number, copy.header.extension), (77, 9, false));
        drop(rx);
        assert!(!target.offer(&packet), "a subscriber that is gone takes nothing");
        assert_eq!(dropped.load(Ordering::Relaxed), 1, "and that is not a queue drop");
    }
}
