//! The send path: the audio and video pumps pull the app's sources and fan every sample out to
//! the connected peers' tracks (the send targets).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use callplus_session::MediaKind;
use rtc::media::Sample;
use tokio::sync::{mpsc, oneshot};
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;

use super::NO_LEVEL;
use crate::source::{AudioConfig, EncodedSample, MediaSource, VideoConfig};

/// A connected peer's sending track for one kind.
pub(super) struct SendTarget {
    pub(super) track: Arc<TrackLocalStaticSample>,
    pub(super) ssrc: u32,
    pub(super) payload_type: u8,
}

#[derive(Default)]
pub(super) struct Targets {
    pub(super) audio: Vec<Arc<SendTarget>>,
    pub(super) video: Vec<Arc<SendTarget>>,
}

pub(super) enum PumpCmd {
    Source(Box<dyn MediaSource>, oneshot::Sender<()>),
    Enabled(bool, oneshot::Sender<()>),
    Video(VideoConfig),
    Audio(AudioConfig),
    /// The target list changed, or a peer asked for a key frame (RTCP PLI/FIR, coalesced per
    /// peer); `keyframe` asks the video source for one.
    Wake {
        keyframe: bool,
    },
}

/// Pulls one kind's source and fans its samples out to the targets.
pub(super) async fn pump(
    kind: MediaKind,
    mut commands: mpsc::UnboundedReceiver<PumpCmd>,
    targets: Arc<RwLock<Targets>>,
    local_level: Arc<AtomicU8>,
) {
    let mut source: Option<Box<dyn MediaSource>> = None;
    let mut enabled = true;
    let mut video_config: Option<VideoConfig> = None;
    let mut audio_config: Option<AudioConfig> = None;
    let has_targets = |targets: &RwLock<Targets>| {
        let t = targets.read().unwrap_or_else(|p| p.into_inner());
        match kind {
            MediaKind::Audio => !t.audio.is_empty(),
            MediaKind::Video => !t.video.is_empty(),
        }
    };
    loop {
        let active = enabled && source.is_some() && has_targets(&targets);
        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else { break };
                match command {
                    PumpCmd::Source(mut new, ack) => {
                        if let Some(c) = &video_config { new.apply_video_config(c) }
                        if let Some(c) = &audio_config { new.apply_audio_config(c) }
                        new.request_keyframe();
                        source = Some(new);
                        let _ = ack.send(());
                    }
                    PumpCmd::Enabled(on, ack) => {
                        enabled = on;
                        if on {
                            if let Some(s) = source.as_mut() { s.request_keyframe() }
                        } else if kind == MediaKind::Audio {
                            local_level.store(NO_LEVEL, Ordering::Release);
                        }
                        let _ = ack.send(());
                    }
                    PumpCmd::Video(c) => {
                        if let Some(s) = source.as_mut() { s.apply_video_config(&c) }
                        video_config = Some(c);
                    }
                    PumpCmd::Audio(c) => {
                        if let Some(s) = source.as_mut() { s.apply_audio_config(&c) }
                        audio_config = Some(c);
                    }
                    PumpCmd::Wake { keyframe } => {
                        if keyframe && let Some(s) = source.as_mut() { s.request_keyframe() }
                    }
                }
            }
            sample = next_sample(&mut source), if active => {
                match sample {
                    Some(sample) => {
                        if kind == MediaKind::Audio {
                            local_level.store(sample.audio_level.unwrap_or(NO_LEVEL), Ordering::Release);
                        }
                        fan_out(kind, &targets, sample).await;
                    }
                    None => {
                        tracing::info!(?kind, "local source ended");
                        source = None;
                    }
                }
            }
        }
    }
}

pub(super) async fn next_sample(source: &mut Option<Box<dyn MediaSource>>) -> Option<EncodedSample> {
    match source.as_mut() {
        Some(source) => source.next_sample().await,
        None => std::future::pending().await,
    }
}

pub(super) async fn fan_out(kind: MediaKind, targets: &RwLock<Targets>, sample: EncodedSample) {
    let list: Vec<Arc<SendTarget>> = {
        let t = targets.read().unwrap_or_else(|p| p.into_inner());
        match kind {
            MediaKind::Audio => t.audio.clone(),
            MediaKind::Video => t.video.clone(),
        }
    };
    let sample = Sample { data: sample.data, duration: sample.duration, ..Sample::new(Instant::now()) };
    for target in list {
        if let Err(e) =
            target.track.sample_writer(target.ssrc, target.payload_type).write_sample(&sample).await
        {
            tracing::debug!(error = %e, ?kind, "sample not sent");
        }
    }
}
