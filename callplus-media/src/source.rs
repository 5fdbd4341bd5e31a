//! Local media: encoded samples the app supplies.

use std::time::Duration;

use bytes::Bytes;
use callplus_session::MediaKind;

/// One encoded frame of local media: an Opus packet or a VP8 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedSample {
    /// The encoded bitstream (not RTP-packetized).
    pub data: Bytes,
    /// How long the frame plays (20 ms for typical Opus, 1/fps for video); sets RTP timestamps.
    pub duration: Duration,
    /// The audio level of the frame, 0–100, when the source knows it (reported as the local
    /// user's [`crate::MediaEvent::AudioLevel`]).
    pub audio_level: Option<u8>,
}

/// Video capture/encoder settings (the video config of docs/protocol.md#client-operations).
/// Taken at the next captured frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoConfig {
    /// Width in pixels (even).
    pub width: u32,
    /// Height in pixels (even).
    pub height: u32,
    /// Frames per second.
    pub fps: u32,
    /// Lowest bitrate the encoder should go to, kbit/s.
    pub min_bitrate_kbps: u32,
    /// Target/highest bitrate, kbit/s.
    pub max_bitrate_kbps: u32,
}

impl Default for VideoConfig {
    fn default() -> Self {
        VideoConfig { width: 320, height: 240, fps: 15, min_bitrate_kbps: 100, max_bitrate_kbps: 500 }
    }
}

/// Audio capture/encoder settings (the audio config of docs/protocol.md#client-operations).
/// Taken at the next captured frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioConfig {
    /// Capture sample rate in Hz (Opus accepts 8000, 12000, 16000, 24000, 48000). The RTP clock
    /// stays 48 kHz whatever the capture rate.
    pub sample_rate: u32,
    /// Lowest bitrate, kbit/s.
    pub min_bitrate_kbps: u32,
    /// Target/highest bitrate, kbit/s.
    pub max_bitrate_kbps: u32,
}

impl Default for AudioConfig {
    fn default() -> Self {
        AudioConfig { sample_rate: 48_000, min_bitrate_kbps: 16, max_bitrate_kbps: 48 }
    }
}

/// A layer of simulcast video: through the SFU, a camera sends its picture twice, whole and at a
/// quarter of the pixels (half the width and height), and each viewer gets one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VideoLayer {
    /// The picture as configured.
    Full,
    /// The small copy for small views (`set_video_view(user, sink, tiny: true)`).
    Tiny,
}

impl VideoConfig {
    /// The config of the tiny layer: half the width and height (even, at least 16), a quarter of
    /// the bitrate (at least 30 kbit/s), same frame rate.
    pub fn tiny(&self) -> VideoConfig {
        let half = |v: u32| ((v / 2) & !1).max(16);
        VideoConfig {
            width: half(self.width),
            height: half(self.height),
            fps: self.fps,
            min_bitrate_kbps: (self.min_bitrate_kbps / 4).max(30),
            max_bitrate_kbps: (self.max_bitrate_kbps / 4).max(30),
        }
    }
}

/// A local camera or microphone as the adapter sees it: a paced producer of encoded samples.
///
/// The adapter pulls [`next_sample`](MediaSource::next_sample) while the device is enabled and a
/// call is connected, and sends each sample to every connected peer. The source paces itself
/// (a camera waits for its next frame); the adapter does not. Samples must be Opus (audio) or
/// VP8 (video).
#[async_trait::async_trait]
pub trait MediaSource: Send + 'static {
    /// Audio or video.
    fn kind(&self) -> MediaKind;

    /// Waits for the next encoded sample; `None` when the source has ended.
    ///
    /// Must be cancel-safe: the adapter drops the future when a command (switch, mute, config)
    /// arrives first, and calls again later.
    async fn next_sample(&mut self) -> Option<EncodedSample>;

    /// Applies a video config (video sources).
    fn apply_video_config(&mut self, _config: &VideoConfig) {}

    /// Applies an audio config (audio sources).
    fn apply_audio_config(&mut self, _config: &AudioConfig) {}

    /// Asks a video source for a key frame soon (a peer just connected), of every layer.
    fn request_keyframe(&mut self) {}

    /// Simulcast (calls through the SFU): when on, a video source that can also encodes each
    /// frame at the [tiny](VideoConfig::tiny) size and hands it out with
    /// [`take_tiny_sample`](MediaSource::take_tiny_sample). Sources that cannot ignore it and send
    /// one layer, which every viewer then gets.
    fn set_simulcast(&mut self, _on: bool) {}

    /// The tiny layer's frame of the picture [`next_sample`](MediaSource::next_sample) just
    /// returned, if the source made one (simulcast on).
    fn take_tiny_sample(&mut self) -> Option<EncodedSample> {
        None
    }

    /// Asks for a key frame of one layer only (a viewer of that layer lost video or switched to
    /// it): the other layer's viewers get no key frame they did not need. By default, a key
    /// frame of every layer.
    fn request_layer_keyframe(&mut self, _layer: VideoLayer) {
        self.request_keyframe();
    }
}
