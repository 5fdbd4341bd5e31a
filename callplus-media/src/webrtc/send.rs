//! The send path: the audio and video pumps pull the app's sources and fan every sample out to
//! the connected peers' tracks (the send targets). Video to the SFU goes out in two simulcast
//! layers, each packet labelled with its `mid` and `rid` header extensions (RFC 8852), which is
//! how the SFU tells the layers apart (our offer names rids, not SSRCs, as browsers do).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use bytes::Bytes;
use callplus_session::MediaKind;
use rtc::media::Sample;
use rtc::rtp::extension::HeaderExtension;
use rtc::rtp::extension::audio_level_extension::AudioLevelExtension;
use rtc::shared::marshal::{Marshal, MarshalSize};
use tokio::sync::{mpsc, oneshot};
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;

use super::NO_LEVEL;
use crate::level::minus_dbov;
use crate::source::{AudioConfig, EncodedSample, MediaSource, VideoConfig, VideoLayer};

/// The `rid` of each simulcast layer (`callplus_sfu::layers` reads them).
pub(super) const FULL_RID: &str = "f";
pub(super) const TINY_RID: &str = "q";
const SDES_MID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
const SDES_RTP_STREAM_ID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";

/// A connected peer's sending track for one kind.
pub(super) struct SendTarget {
    pub(super) track: Arc<TrackLocalStaticSample>,
    pub(super) ssrc: u32,
    pub(super) payload_type: u8,
    /// Simulcast video (to the SFU): the tiny layer's SSRC and the media section's `mid`.
    pub(super) simulcast: Option<Simulcast>,
    /// Audio packets carry their level (RFC 6464): only to the SFU, which offered it itself and
    /// reads it. A peer's offer may map the extension to an id this stack does not write, and
    /// a browser then dropped our audio.
    pub(super) carries_level: bool,
}

/// What a simulcast sending track needs besides its full layer's SSRC.
pub(super) struct Simulcast {
    pub(super) tiny_ssrc: u32,
    pub(super) mid: String,
}

/// The value of an SDES header extension (`mid`, `rid`): the text itself.
struct SdesValue(Bytes);

impl MarshalSize for SdesValue {
    fn marshal_size(&self) -> usize {
        self.0.len()
    }
}

impl Marshal for SdesValue {
    fn marshal_to(&self, buf: &mut [u8]) -> rtc::shared::error::Result<usize> {
        let n = self.0.len();
        match buf.get_mut(..n) {
            Some(out) => {
                out.copy_from_slice(&self.0);
                Ok(n)
            }
            None => Err(rtc::shared::error::Error::ErrBufferTooSmall),
        }
    }
}

fn sdes(uri: &'static str, value: &str) -> HeaderExtension {
    HeaderExtension::Custom {
        uri: uri.into(),
        extension: Box::new(SdesValue(Bytes::copy_from_slice(value.as_bytes()))),
    }
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
    /// A peer (the SFU) asked for a key frame of one simulcast layer.
    LayerKeyframe(VideoLayer),
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
    // Whether a target takes two layers (the source is told when that changes).
    let wants_simulcast = |targets: &RwLock<Targets>| {
        let t = targets.read().unwrap_or_else(|p| p.into_inner());
        kind == MediaKind::Video && t.video.iter().any(|t| t.simulcast.is_some())
    };
    let mut simulcast = false;
    loop {
        let active = enabled && source.is_some() && has_targets(&targets);
        let wanted = wants_simulcast(&targets);
        if wanted != simulcast {
            simulcast = wanted;
            if let Some(s) = source.as_mut() {
                s.set_simulcast(simulcast)
            }
        }
        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else { break };
                match command {
                    PumpCmd::Source(mut new, ack) => {
                        if let Some(c) = &video_config { new.apply_video_config(c) }
                        if let Some(c) = &audio_config { new.apply_audio_config(c) }
                        new.request_keyframe();
                        new.set_simulcast(simulcast);
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
                    PumpCmd::LayerKeyframe(layer) => {
                        if let Some(s) = source.as_mut() { s.request_layer_keyframe(layer) }
                    }
                }
            }
            sample = next_sample(&mut source), if active => {
                match sample {
                    Some(sample) => {
                        if kind == MediaKind::Audio {
                            local_level.store(sample.audio_level.unwrap_or(NO_LEVEL), Ordering::Release);
                        }
                        let tiny = source.as_mut().and_then(|s| s.take_tiny_sample());
                        fan_out(kind, &targets, sample, tiny).await;
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

/// Sends one sample to every target of its kind; `tiny` is the tiny layer of the same video
/// frame, for the targets that take simulcast.
pub(super) async fn fan_out(
    kind: MediaKind,
    targets: &RwLock<Targets>,
    sample: EncodedSample,
    tiny: Option<EncodedSample>,
) {
    let list: Vec<Arc<SendTarget>> = {
        let t = targets.read().unwrap_or_else(|p| p.into_inner());
        match kind {
            MediaKind::Audio => t.audio.clone(),
            MediaKind::Video => t.video.clone(),
        }
    };
    // Audio packets carry their level (RFC 6464) for an SFU's levels and active speaker.
    let level = (kind == MediaKind::Audio).then_some(sample.audio_level).flatten();
    let level_extension = || {
        level.map(|level| {
            HeaderExtension::AudioLevel(AudioLevelExtension { level: minus_dbov(level), voice: level > 0 })
        })
    };
    let now = Instant::now();
    let sample = Sample { data: sample.data, duration: sample.duration, ..Sample::new(now) };
    let tiny = tiny.map(|t| Sample { data: t.data, duration: t.duration, ..Sample::new(now) });
    for target in list {
        let sent = match &target.simulcast {
            None => {
                let writer = target.track.sample_writer(target.ssrc, target.payload_type);
                match level_extension().filter(|_| target.carries_level) {
                    Some(extension) => writer.with_extension(extension).write_sample(&sample).await,
                    None => writer.write_sample(&sample).await,
                }
            }
            Some(simulcast) => {
                let full = target
                    .track
                    .sample_writer(target.ssrc, target.payload_type)
                    .with_extension(sdes(SDES_MID_URI, &simulcast.mid))
                    .with_extension(sdes(SDES_RTP_STREAM_ID_URI, FULL_RID))
                    .write_sample(&sample)
                    .await;
                match &tiny {
                    Some(tiny) => target
                        .track
                        .sample_writer(simulcast.tiny_ssrc, target.payload_type)
                        .with_extension(sdes(SDES_MID_URI, &simulcast.mid))
                        .with_extension(sdes(SDES_RTP_STREAM_ID_URI, TINY_RID))
                        .write_sample(tiny)
                        .await
                        .and(full),
                    None => full,
                }
            }
        };
        if let Err(e) = sent {
            tracing::debug!(error = %e, ?kind, "sample not sent");
        }
    }
}
