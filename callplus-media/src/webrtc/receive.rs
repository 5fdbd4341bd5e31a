//! The receive path of one remote track: depacketize, feed the sink, track the first frame,
//! measure the audio level; for video, reorder and ask for a key frame when the stream breaks.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use callplus_session::{Code, MediaKind, UserId};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};

use super::lock;
use super::peer::PeerShared;
use crate::adapter::MediaEvent;
use crate::pli_pacer::{Pacer, pli_hold_off};
use crate::reorder::{self, Pushed, ReorderBuffer};
use crate::sink::RemoteFrame;
use crate::vp8::{Vp8Depacketizer, is_keyframe};

/// Reads one remote track until it ends.
pub(super) async fn receive_loop(shared: Arc<PeerShared>, track: Arc<dyn TrackRemote>) {
    let kind = match track.kind().await {
        RtpCodecKind::Audio => MediaKind::Audio,
        RtpCodecKind::Video => MediaKind::Video,
        other => {
            tracing::debug!(?other, "ignoring remote track of unknown kind");
            return;
        }
    };
    // Whose media this is: the peer's; through an SFU, the user the stream id names.
    let user = if shared.sfu_token.is_some() {
        let stream_id = track.stream_id().await;
        match UserId::new(&stream_id) {
            Ok(user) if user != shared.local_user => {
                lock(&shared.sfu_users).insert(user.clone());
                user
            }
            _ => {
                tracing::debug!(stream_id, "SFU track of no other user ignored");
                return;
            }
        }
    } else {
        shared.user.clone()
    };
    let ssrcs = track.ssrcs().await;
    tracing::debug!(call = %shared.call_id, user = %user, ?kind, ?ssrcs, "remote track started");
    shared.emit(MediaEvent::UserMediaAvailable { call_id: shared.call_id.clone(), user: user.clone(), kind });
    // Audio tracks leave it empty: it never has a deadline.
    let mut video = VideoReceive::new();
    let mut decoder = match kind {
        MediaKind::Audio => opus::Decoder::new(48_000, opus::Channels::Mono)
            .map_err(|e| tracing::warn!(error = %e, "no opus decoder: no audio levels"))
            .ok(),
        MediaKind::Video => None,
    };
    let mut pcm = vec![0i16; 5760];
    loop {
        // Video packets behind a gap wait in the reorder buffer: wake up when it gives the gap
        // up, if no packet comes first. (`poll` is a channel receive: cancel-safe.)
        let deadline = video.reorder.next_deadline();
        let wake = tokio::select! {
            event = track.poll() => Wake::Track(event),
            () = sleep_until(deadline), if deadline.is_some() => Wake::Deadline,
        };
        if shared.closed.load(Ordering::Acquire) {
            break;
        }
        let event = match wake {
            Wake::Track(Some(event)) => event,
            Wake::Track(None) => break,
            Wake::Deadline => {
                video.release(&shared, &user, track.as_ref(), Instant::now()).await;
                continue;
            }
        };
        match event {
            TrackRemoteEvent::OnRtpPacket(packet) => match kind {
                // Opus conceals a lost packet better than a late one helps: audio is not held
                // back for reordering (and its RTCP feedback offers no NACK).
                MediaKind::Audio => {
                    if packet.payload.is_empty() {
                        continue;
                    }
                    if let Some(decoder) = decoder.as_mut()
                        && let Ok(n) = decoder.decode(&packet.payload, &mut pcm, false)
                    {
                        let sum: f64 = pcm[..n].iter().map(|&v| f64::from(v) * f64::from(v)).sum();
                        let mut levels = lock(&shared.levels);
                        let level = levels.entry(user.clone()).or_default();
                        level.0 += sum;
                        level.1 += n as u64;
                    }
                    shared.deliver(
                        &user,
                        RemoteFrame {
                            kind,
                            data: packet.payload.clone(),
                            rtp_timestamp: packet.header.timestamp,
                            keyframe: true,
                        },
                    );
                }
                MediaKind::Video => {
                    let now = Instant::now();
                    video.reorder.set_max_wait(reorder::max_wait(lock(&shared.reports).rtt_estimate()));
                    let seq = packet.header.sequence_number;
                    let pushed = video.reorder.push(seq, packet, now);
                    if pushed != Pushed::Accepted {
                        tracing::trace!(seq, ?pushed, "video packet dropped by the reorder buffer");
                    }
                    video.release(&shared, &user, track.as_ref(), now).await;
                }
            },
            TrackRemoteEvent::OnError => shared.emit(MediaEvent::FetchRemoteMediaError {
                call_id: shared.call_id.clone(),
                user: user.clone(),
                code: Code::MediaResourceInvalid,
            }),
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
    tracing::debug!(call = %shared.call_id, user = %user, ?kind, "remote track ended");
}

/// Why the receive loop woke up.
pub(super) enum Wake {
    /// The track's next event; `None` once it is gone.
    Track(Option<TrackRemoteEvent>),
    /// The reorder buffer's deadline passed.
    Deadline,
}

/// Sleeps until `deadline`, or forever without one.
pub(super) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// The receive path of one remote video track: reorder buffer, VP8 depacketizer, PLI pacing.
pub(super) struct VideoReceive {
    pub(super) reorder: ReorderBuffer<rtp::Packet>,
    pub(super) vp8: Vp8Depacketizer,
    pub(super) pli: Pacer,
}

impl VideoReceive {
    pub(super) fn new() -> Self {
        VideoReceive {
            reorder: ReorderBuffer::new(reorder::max_wait(None)),
            vp8: Vp8Depacketizer::new(),
            pli: Pacer::new(),
        }
    }

    /// Depacketizes what the reorder buffer lets go at `now`: complete frames go to the sink, and
    /// a stream that cannot be decoded (a gap given up, among others) asks for a key frame.
    pub(super) async fn release(
        &mut self,
        shared: &PeerShared,
        user: &UserId,
        track: &dyn TrackRemote,
        now: Instant,
    ) {
        while let Some(packet) = self.reorder.poll(now) {
            let header = &packet.header;
            let frame =
                self.vp8.push(header.sequence_number, header.timestamp, header.marker, &packet.payload);
            if self.vp8.needs_keyframe() {
                request_keyframe(shared, track, &mut self.pli, header.ssrc).await;
            }
            if let Some((data, rtp_timestamp)) = frame {
                shared.deliver(
                    user,
                    RemoteFrame { kind: MediaKind::Video, keyframe: is_keyframe(&data), data, rtp_timestamp },
                );
            }
        }
        let counts = self.reorder.take_counts();
        if counts.lost > 0 {
            tracing::debug!(call = %shared.call_id, user = %user, lost = counts.lost, "video gap given up");
        }
        shared.video_recovered.fetch_add(counts.recovered, Ordering::Relaxed);
        shared.video_lost.fetch_add(counts.lost, Ordering::Relaxed);
    }
}

/// Sends a PLI for the remote video stream `media_ssrc` if the pacer lets one through.
pub(super) async fn request_keyframe(
    shared: &PeerShared,
    track: &dyn TrackRemote,
    pacer: &mut Pacer,
    media_ssrc: u32,
) {
    let rtt = lock(&shared.reports).rtt_estimate();
    if !pacer.poll(Instant::now(), pli_hold_off(rtt)) {
        return;
    }
    let pli = PictureLossIndication { sender_ssrc: shared.video_ssrc, media_ssrc };
    match track.write_rtcp(vec![Box::new(pli)]).await {
        Ok(()) => {
            shared.plis_sent.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(call = %shared.call_id, user = %shared.user, media_ssrc, "video undecodable: PLI sent");
        }
        Err(e) => tracing::debug!(error = %e, "PLI not sent"),
    }
}
