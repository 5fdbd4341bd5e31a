//! Forwarding one published track: every RTP packet from the publisher goes, unchanged but for
//! its SSRC, to each subscriber's outgoing track. Nothing is decoded.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use callplus_session::{DeviceId, UserId};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};

/// One subscriber's copy of a published stream.
pub(crate) struct Target {
    pub(crate) track: Arc<TrackLocalStaticRTP>,
    /// The SSRC of the stream on the subscriber's connection.
    pub(crate) ssrc: u32,
}

/// The subscribers of one published stream, by (user, device).
pub(crate) type Fanout = RwLock<HashMap<(UserId, DeviceId), Arc<Target>>>;

/// Reads the publisher's track until it ends and copies each packet to every subscriber.
///
/// Sequence numbers and timestamps stay the publisher's, so a subscriber's NACK names the same
/// packet the SFU asks the publisher for. Header extensions are dropped: their ids were
/// negotiated on the publisher's connection, not the subscriber's.
pub(crate) async fn forward(track: Arc<dyn TrackRemote>, fanout: Arc<Fanout>) {
    while let Some(event) = track.poll().await {
        match event {
            TrackRemoteEvent::OnRtpPacket(packet) => {
                let targets: Vec<Arc<Target>> =
                    fanout.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
                for target in targets {
                    let mut copy = packet.clone();
                    copy.header.ssrc = target.ssrc;
                    copy.header.extension = false;
                    copy.header.extension_profile = 0;
                    copy.header.extensions.clear();
                    if let Err(e) = target.track.write_rtp(copy).await {
                        // Before the subscriber's answer binds the track, or after it left.
                        tracing::trace!(error = %e, "packet not forwarded");
                    }
                }
            }
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
}
