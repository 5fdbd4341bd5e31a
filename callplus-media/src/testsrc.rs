//! Test sources: an Opus sine tone and a VP8 moving test pattern, both paced in real time.

use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use bytes::Bytes;
use callplus_session::MediaKind;
use tokio::sync::oneshot;
use tokio::time::{Interval, MissedTickBehavior};

use crate::error::MediaError;
use crate::level::audio_level;
use crate::source::{AudioConfig, EncodedSample, MediaSource, VideoConfig, VideoLayer};
use crate::vp8_encoder::{Vp8Encoder, Vp8Frame, Vp8Settings};

/// Opus frame length.
const FRAME: Duration = Duration::from_millis(20);
/// Largest Opus packet we produce.
const MAX_OPUS_PACKET: usize = 4000;

fn opus_err(e: opus::Error) -> MediaError {
    MediaError::Codec(format!("opus: {e}"))
}

fn ticker(period: Duration) -> Interval {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
}

/// A microphone that plays a sine tone, encoded with libopus (mono, 20 ms frames), paced in
/// real time.
pub struct ToneSource {
    frequency: f64,
    amplitude: f64,
    config: AudioConfig,
    encoder: opus::Encoder,
    phase: f64,
    ticker: Option<Interval>,
}

impl std::fmt::Debug for ToneSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToneSource")
            .field("frequency", &self.frequency)
            .field("config", &self.config)
            .finish()
    }
}

impl ToneSource {
    /// A tone of `frequency` Hz at `amplitude` (0.0–1.0 of full scale).
    ///
    /// # Errors
    /// [`MediaError::Config`] for an unsupported sample rate, [`MediaError::Codec`] if libopus
    /// refuses the settings.
    pub fn new(frequency: f64, amplitude: f64, config: AudioConfig) -> Result<Self, MediaError> {
        if !(0.0..=1.0).contains(&amplitude) || !(1.0..=20_000.0).contains(&frequency) {
            return Err(MediaError::Config(format!("tone {frequency} Hz at {amplitude}")));
        }
        let encoder = Self::encoder(&config)?;
        Ok(ToneSource { frequency, amplitude, config, encoder, phase: 0.0, ticker: None })
    }

    fn encoder(config: &AudioConfig) -> Result<opus::Encoder, MediaError> {
        if ![8_000, 12_000, 16_000, 24_000, 48_000].contains(&config.sample_rate) {
            return Err(MediaError::Config(format!("unsupported Opus sample rate {}", config.sample_rate)));
        }
        let mut encoder =
            opus::Encoder::new(config.sample_rate, opus::Channels::Mono, opus::Application::Audio)
                .map_err(opus_err)?;
        let bits = config.max_bitrate_kbps.clamp(6, 510) as i32 * 1000;
        encoder.set_bitrate(opus::Bitrate::Bits(bits)).map_err(opus_err)?;
        Ok(encoder)
    }

    fn encode_frame(&mut self) -> Result<EncodedSample, MediaError> {
        let rate = f64::from(self.config.sample_rate);
        let n = (self.config.sample_rate / 50) as usize;
        let step = std::f64::consts::TAU * self.frequency / rate;
        let pcm: Vec<i16> = (0..n)
            .map(|_| {
                let v = self.amplitude * 32767.0 * self.phase.sin();
                self.phase = (self.phase + step) % std::f64::consts::TAU;
                v as i16
            })
            .collect();
        let data = self.encoder.encode_vec(&pcm, MAX_OPUS_PACKET).map_err(opus_err)?;
        Ok(EncodedSample { data: Bytes::from(data), duration: FRAME, audio_level: Some(audio_level(&pcm)) })
    }
}

#[async_trait::async_trait]
impl MediaSource for ToneSource {
    fn kind(&self) -> MediaKind {
        MediaKind::Audio
    }

    async fn next_sample(&mut self) -> Option<EncodedSample> {
        self.ticker.get_or_insert_with(|| ticker(FRAME)).tick().await;
        match self.encode_frame() {
            Ok(sample) => Some(sample),
            Err(e) => {
                tracing::warn!(error = %e, "tone source stops");
                None
            }
        }
    }

    fn apply_audio_config(&mut self, config: &AudioConfig) {
        match Self::encoder(config) {
            Ok(encoder) => {
                self.encoder = encoder;
                self.config = *config;
            }
            Err(e) => tracing::warn!(error = %e, "audio config refused; keeping the previous one"),
        }
    }
}

/// Encoded frames (data, key frame?) of the full and the tiny layer, or why encoding failed.
type EncodeResult = Result<(Vec<Vp8Frame>, Vec<Vp8Frame>), String>;

/// One encode job for the encoder thread.
struct EncodeJob {
    index: u64,
    config: VideoConfig,
    /// Encode this frame as a key frame.
    keyframe: bool,
    /// Also encode the tiny layer (simulcast); `Some(true)` as a key frame.
    tiny: Option<bool>,
    reply: oneshot::Sender<EncodeResult>,
}

/// A camera that shows a moving test pattern (colour bars sliding sideways over a gradient),
/// encoded to VP8 with libvpx on its own thread, paced at the configured frame rate.
///
/// Config changes restart the encoder (whose first frame is a key frame); key-frame requests
/// make the next frame a key frame. With simulcast on, a second encoder makes the tiny layer of
/// each frame (the same pattern drawn at [`VideoConfig::tiny`]'s size), with its own key frames.
pub struct TestPatternSource {
    config: VideoConfig,
    jobs: std_mpsc::Sender<EncodeJob>,
    index: u64,
    /// The next frame must be a key frame (the first, or one a peer asked for).
    keyframe: bool,
    /// Simulcast on: the tiny layer is encoded too.
    simulcast: bool,
    /// The next tiny frame must be a key frame.
    tiny_keyframe: bool,
    /// The tiny layer of the last frame returned.
    tiny: Option<EncodedSample>,
    ticker: Option<Interval>,
}

impl std::fmt::Debug for TestPatternSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPatternSource").field("config", &self.config).finish()
    }
}

fn check_video_config(config: &VideoConfig) -> Result<(), MediaError> {
    let ok = config.width >= 16
        && config.height >= 16
        && config.width <= 4096
        && config.height <= 4096
        && config.width.is_multiple_of(2)
        && config.height.is_multiple_of(2)
        && (1..=120).contains(&config.fps)
        && config.max_bitrate_kbps > 0;
    if ok { Ok(()) } else { Err(MediaError::Config(format!("invalid video config {config:?}"))) }
}

impl TestPatternSource {
    /// A pattern source with this config; starts the encoder thread.
    ///
    /// # Errors
    /// [`MediaError::Config`] for odd or out-of-range sizes, zero fps or bitrate;
    /// [`MediaError::Io`] if the thread cannot start.
    pub fn new(config: VideoConfig) -> Result<Self, MediaError> {
        check_video_config(&config)?;
        let (jobs, rx) = std_mpsc::channel::<EncodeJob>();
        std::thread::Builder::new().name("vp8-pattern".into()).spawn(move || encoder_thread(rx))?;
        Ok(TestPatternSource {
            config,
            jobs,
            index: 0,
            keyframe: true,
            simulcast: false,
            tiny_keyframe: true,
            tiny: None,
            ticker: None,
        })
    }
}

/// Builds the I420 test pattern for frame `index`.
fn pattern(config: &VideoConfig, index: u64) -> Vec<u8> {
    let (w, h) = (config.width as usize, config.height as usize);
    let mut buf = vec![0u8; w * h * 3 / 2];
    let shift = (index as usize * 4) % w;
    let bar = (w / 8).max(1);
    let (luma, chroma) = buf.split_at_mut(w * h);
    for y in 0..h {
        for x in 0..w {
            let b = ((x + shift) / bar) % 8;
            let gradient = (y * 64 / h) as u8;
            luma[y * w + x] = 40 + (b as u8) * 22 + gradient / 2;
        }
    }
    let (cw, ch) = (w / 2, h / 2);
    let (u, v) = chroma.split_at_mut(cw * ch);
    for y in 0..ch {
        for x in 0..cw {
            let b = ((x * 2 + shift) / bar) % 8;
            u[y * cw + x] = 64 + (b as u8) * 16;
            v[y * cw + x] = 192 - (b as u8) * 16;
        }
    }
    buf
}

/// Encodes frame `index` of the pattern at `config` with `encoder` (made again when the config
/// changed).
fn encode_pattern(
    encoder: &mut Option<(Vp8Encoder, i64)>,
    config: &VideoConfig,
    index: u64,
    keyframe: bool,
) -> Result<Vec<Vp8Frame>, String> {
    let settings = Vp8Settings {
        width: config.width,
        height: config.height,
        fps: config.fps,
        bitrate_kbps: config.max_bitrate_kbps,
    };
    if encoder.as_ref().is_none_or(|(enc, _)| enc.settings() != settings) {
        *encoder = None; // destroy the old context first
        *encoder = Some((Vp8Encoder::new(settings)?, 0));
    }
    let Some((enc, pts)) = encoder.as_mut() else { return Err("no encoder".into()) };
    let image = pattern(config, index);
    let out = enc.encode(*pts, &image, keyframe)?;
    *pts += 1;
    Ok(out)
}

fn encoder_thread(jobs: std_mpsc::Receiver<EncodeJob>) {
    let mut full: Option<(Vp8Encoder, i64)> = None;
    let mut tiny: Option<(Vp8Encoder, i64)> = None;
    while let Ok(job) = jobs.recv() {
        let result = (|| -> EncodeResult {
            let out = encode_pattern(&mut full, &job.config, job.index, job.keyframe)?;
            let small = match job.tiny {
                Some(keyframe) => encode_pattern(&mut tiny, &job.config.tiny(), job.index, keyframe)?,
                None => {
                    tiny = None; // a later start of the layer begins with a key frame
                    Vec::new()
                }
            };
            Ok((out, small))
        })();
        // The source may have given up waiting (its future was dropped): nothing to do.
        let _ = job.reply.send(result);
    }
}

#[async_trait::async_trait]
impl MediaSource for TestPatternSource {
    fn kind(&self) -> MediaKind {
        MediaKind::Video
    }

    async fn next_sample(&mut self) -> Option<EncodedSample> {
        let period = Duration::from_secs(1) / self.config.fps;
        loop {
            self.ticker.get_or_insert_with(|| ticker(period)).tick().await;
            let (reply, rx) = oneshot::channel();
            let tiny = self.simulcast.then_some(self.tiny_keyframe);
            let job =
                EncodeJob { index: self.index, config: self.config, keyframe: self.keyframe, tiny, reply };
            if self.jobs.send(job).is_err() {
                tracing::warn!("vp8 encoder thread is gone");
                return None;
            }
            self.index += 1;
            match rx.await {
                Ok(Ok((frames, tiny))) => {
                    if frames.iter().any(|(_, key)| *key) {
                        self.keyframe = false;
                    }
                    if tiny.iter().any(|(_, key)| *key) {
                        self.tiny_keyframe = false;
                    }
                    let join = |frames: Vec<Vp8Frame>| {
                        let mut data = Vec::new();
                        for (frame, _key) in frames {
                            data.extend_from_slice(&frame);
                        }
                        data
                    };
                    let (data, tiny) = (join(frames), join(tiny));
                    self.tiny = (!tiny.is_empty()).then(|| EncodedSample {
                        data: Bytes::from(tiny),
                        duration: period,
                        audio_level: None,
                    });
                    if !data.is_empty() {
                        return Some(EncodedSample {
                            data: Bytes::from(data),
                            duration: period,
                            audio_level: None,
                        });
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "vp8 encoding failed; pattern source stops");
                    return None;
                }
                Err(_) => return None,
            }
        }
    }

    fn apply_video_config(&mut self, config: &VideoConfig) {
        match check_video_config(config) {
            Ok(()) => {
                if config.fps != self.config.fps {
                    self.ticker = None;
                }
                self.config = *config;
            }
            Err(e) => tracing::warn!(error = %e, "video config refused; keeping the previous one"),
        }
    }

    fn request_keyframe(&mut self) {
        self.keyframe = true;
        self.tiny_keyframe = true;
    }

    fn set_simulcast(&mut self, on: bool) {
        if on && !self.simulcast {
            self.tiny_keyframe = true;
        }
        self.simulcast = on;
    }

    fn take_tiny_sample(&mut self) -> Option<EncodedSample> {
        self.tiny.take()
    }

    fn request_layer_keyframe(&mut self, layer: VideoLayer) {
        match layer {
            VideoLayer::Full => self.keyframe = true,
            VideoLayer::Tiny => self.tiny_keyframe = true,
        }
    }
}
