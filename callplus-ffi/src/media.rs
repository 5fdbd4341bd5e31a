//! Built-in media from C: the sources and sinks a client's media is set up with, and the
//! functions that feed the app's microphone and camera samples and receive remote frames.

use std::ffi::c_void;
use std::sync::Arc;
use std::time::Duration;

use ::callplus_client::MediaOptions;
use bytes::Bytes;
use callplus_media::{
    AudioConfig, EncodedSample, MediaKind, MediaSink, MediaSource, ToneSource, VideoConfig, WebRtcConfig,
};
use callplus_session::{CallState, MediaType};

use crate::client::callplus_client;
use crate::client_options::{MediaSettings, SourceChoice};
use crate::events::Events;
use crate::feed::{FedSource, SampleFeed};
use crate::ffi::{boundary_result, try_ref};
use crate::result::callplus_result;
use crate::sink::{CallbackSink, SinkSlot, callplus_media_sink_callback, sink_callback};

/// Amplitude of the built-in test tone: half scale (audio level about 50).
const TONE_AMPLITUDE: f64 = 0.5;
/// Largest audio sample accepted: far above any Opus packet.
const MAX_AUDIO_SAMPLE: usize = 16 * 1024;
/// Largest video frame accepted.
const MAX_VIDEO_SAMPLE: usize = 4 * 1024 * 1024;
/// Longest Opus packet.
const MAX_AUDIO_DURATION_US: u32 = 120_000;
/// Longest video frame (1 fps).
const MAX_VIDEO_DURATION_US: u32 = 1_000_000;

/// A client's built-in media as the C side holds it: the feeds of the app's devices and the
/// sink callback.
pub(crate) struct ClientMedia {
    microphone: Option<Arc<SampleFeed>>,
    camera: Option<Arc<SampleFeed>>,
    sink: Arc<SinkSlot>,
}

impl ClientMedia {
    /// The C side of the media and the client's media options for `settings`. Keyframe requests
    /// of the app's camera become events of `events`.
    pub(crate) fn new(settings: &MediaSettings, events: &Arc<Events>) -> (Self, MediaOptions) {
        let webrtc = WebRtcConfig {
            bind_addrs: vec![settings.bind_addr.clone()],
            simulcast: settings.simulcast,
            ..WebRtcConfig::default()
        };
        let mut options = MediaOptions::new(webrtc);
        let mut media = ClientMedia { microphone: None, camera: None, sink: Arc::default() };
        match settings.microphone {
            SourceChoice::None => {}
            SourceChoice::Test => {
                let hz = f64::from(settings.tone_hz);
                options = options.with_microphone(move || {
                    let tone = ToneSource::new(hz, TONE_AMPLITUDE, AudioConfig::default())?;
                    Ok(Box::new(tone) as Box<dyn MediaSource>)
                });
            }
            SourceChoice::App => {
                let feed = Arc::new(SampleFeed::new(MediaKind::Audio, || {}));
                options = options.with_microphone(fed(&feed));
                media.microphone = Some(feed);
            }
        }
        match settings.camera {
            SourceChoice::None => {}
            SourceChoice::Test => options = options.with_test_pattern(VideoConfig::default()),
            SourceChoice::App => {
                let events = Arc::downgrade(events);
                let feed = Arc::new(SampleFeed::new(MediaKind::Video, move || {
                    if let Some(events) = events.upgrade() {
                        events.keyframe_requested();
                    }
                }));
                options = options.with_camera(fed(&feed));
                media.camera = Some(feed);
            }
        }
        let slot = Arc::clone(&media.sink);
        options = options.with_call_sinks(move |call, user, kind| {
            Some(Box::new(CallbackSink::new(Arc::clone(&slot), call, user, kind)) as Box<dyn MediaSink>)
        });
        (media, options)
    }

    /// Stops delivering frames (the client is being freed), waiting for a running callback.
    pub(crate) fn stop(&self) {
        self.sink.set(None);
    }
}

/// A source factory reading `feed`: one source per call, all on the client's one feed.
fn fed(
    feed: &Arc<SampleFeed>,
) -> impl Fn() -> Result<Box<dyn MediaSource>, callplus_media::MediaError> + Send + Sync + 'static {
    let feed = Arc::clone(feed);
    move || Ok(Box::new(FedSource::new(Arc::clone(&feed))) as Box<dyn MediaSource>)
}

/// The body of both push functions.
///
/// # Safety
/// `client` must be NULL or a live client; `data` NULL or readable for `len` bytes.
unsafe fn push_sample(
    client: *const callplus_client,
    kind: MediaKind,
    data: *const u8,
    len: usize,
    duration_us: u32,
) -> callplus_result {
    boundary_result(|| {
        // SAFETY: forwarded contract.
        let handle = unsafe { try_ref(client)? };
        if data.is_null() {
            return Err(callplus_result::NullParameter);
        }
        let (max_len, max_duration) = match kind {
            MediaKind::Audio => (MAX_AUDIO_SAMPLE, MAX_AUDIO_DURATION_US),
            MediaKind::Video => (MAX_VIDEO_SAMPLE, MAX_VIDEO_DURATION_US),
        };
        if len == 0 || len > max_len || duration_us == 0 || duration_us > max_duration {
            return Err(callplus_result::ParamError);
        }
        let media = handle.media.as_ref().ok_or(callplus_result::InvalidState)?;
        let feed = match kind {
            MediaKind::Audio => media.microphone.as_ref(),
            MediaKind::Video => media.camera.as_ref(),
        };
        let feed = feed.ok_or(callplus_result::InvalidState)?;
        let call = handle.client()?.current_call();
        let Some(call) = call.filter(|c| matches!(c.state(), CallState::Connecting | CallState::OnCall))
        else {
            feed.clear();
            return Err(callplus_result::NotInCall);
        };
        if kind == MediaKind::Video && call.media_type() != MediaType::AudioVideo {
            feed.clear();
            return Err(callplus_result::NotVideoCall);
        }
        // What is captured while the device is off must never reach a peer, not even queued
        // for when it comes back on.
        let closed = match kind {
            MediaKind::Audio => (!call.microphone_enabled()).then_some(callplus_result::MicrophoneClosed),
            MediaKind::Video => (!call.camera_enabled()).then_some(callplus_result::CameraClosed),
        };
        if let Some(closed) = closed {
            feed.clear();
            return Err(closed);
        }
        // SAFETY: the caller guarantees `len` readable bytes at `data` (non-NULL, checked).
        let bytes = Bytes::copy_from_slice(unsafe { std::slice::from_raw_parts(data, len) });
        let duration = Duration::from_micros(u64::from(duration_us));
        feed.push(EncodedSample { data: bytes, duration, audio_level: None });
        Ok(())
    })
}

/// Pushes one Opus packet from the app's microphone (a client connected with
/// `enable_media` and `app_microphone`). The packet is copied.
///
/// - `data`, `len`: one Opus packet (mono or stereo, 48 kHz RTP clock), 1–16384 bytes.
/// - `duration_us`: how long it plays (typically 20000), 1–120000.
///
/// Push at the pace you capture: the client sends each packet as it is taken and does not pace
/// them itself. While the media cannot send (the call is still connecting, the microphone is
/// off), about half a second is kept and older packets are dropped, so sending resumes with
/// fresh audio.
///
/// Returns `OK` when queued; `NOT_IN_CALL` when this client has no connected or connecting call
/// (the packet is dropped, with anything still queued, so a later call does not start with
/// stale audio); `MICROPHONE_CLOSED` while this user's microphone is off (dropped likewise:
/// nothing captured while off is ever sent);
/// `INVALID_STATE` when the client was not connected with `app_microphone`; `PARAM_ERROR` for
/// an empty or too large sample, or a zero or too long duration; `NULL_PARAMETER`. Does not block.
///
/// **Thread:** any, also concurrently with other client functions, and also from an event or
/// media sink callback.
///
/// # Safety
/// `client` must be NULL or a live client; `data` NULL or readable for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_client_push_audio_sample(
    client: *const callplus_client,
    data: *const u8,
    len: usize,
    duration_us: u32,
) -> callplus_result {
    // SAFETY: forwarded contract.
    unsafe { push_sample(client, MediaKind::Audio, data, len, duration_us) }
}

/// Pushes one encoded VP8 frame from the app's camera (a client connected with `enable_media`
/// and `app_camera`). The frame is copied.
///
/// - `data`, `len`: one whole VP8 frame, 1 byte to 4 MiB.
/// - `duration_us`: how long it shows (1/fps, e.g. 66666 at 15 fps), 1–1000000.
///
/// Push at the camera's pace; the client does not pace frames. Peers that join, and the camera
/// turned back on, need a key frame to start decoding: the client asks for one with a
/// VIDEO_KEYFRAME_REQUESTED event. About half a second of frames is kept while the media
/// cannot send; older ones are dropped.
///
/// Returns `OK` when queued; `NOT_IN_CALL` when this client has no connected or connecting
/// call, `NOT_VIDEO_CALL` when the call is audio only, and `CAMERA_CLOSED` while this user's
/// camera is off (the frame is dropped, with anything still queued); `INVALID_STATE` when the client was not connected with `app_camera`;
/// `PARAM_ERROR` for an empty or too large frame, or a zero or too long duration; `NULL_PARAMETER`. Does not
/// block.
///
/// **Thread:** any, also concurrently with other client functions, and also from an event or
/// media sink callback.
///
/// # Safety
/// `client` must be NULL or a live client; `data` NULL or readable for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_client_push_video_sample(
    client: *const callplus_client,
    data: *const u8,
    len: usize,
    duration_us: u32,
) -> callplus_result {
    // SAFETY: forwarded contract.
    unsafe { push_sample(client, MediaKind::Video, data, len, duration_us) }
}

/// Installs `callback` to receive every remote media frame of every call (a client connected
/// with `enable_media`), or removes it when `callback` is NULL (frames are then dropped).
///
/// Each frame names its call, its remote user and its kind, and carries the encoded bytes
/// (Opus packet or whole VP8 frame) with its timing; see `struct callplus_media_frame`. This
/// user's own media is never delivered (no echo).
///
/// **Thread:** the callback runs on the client's runtime thread, one frame at a time (never
/// concurrently with itself), in arrival order per user and kind. While it runs the client does
/// nothing else (media, signalling, event delivery wait): copy the bytes and hand them to your
/// decoder or player thread. It must not call the client's blocking functions (they return `INVALID_STATE`
/// there); the push functions are fine. `user_data` is passed back unchanged and must be usable
/// from that thread.
///
/// **Ownership:** the frame and every pointer in it are borrowed for the duration of the
/// callback only.
///
/// Removing the callback (NULL) waits until a running invocation returns (unless called from
/// it), so after that `user_data` may be freed; `callplus_client_free` removes it too, and once
/// it returns no frame is delivered any more.
/// Replacing one callback by another takes effect from the next frame.
///
/// Returns `OK`; `INVALID_STATE` when the client was connected without `enable_media`;
/// `NULL_PARAMETER` for a NULL client.
///
/// # Safety
/// `client` must be NULL or a live client; `callback` NULL or a function safe to call from
/// another thread with `user_data`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_client_set_media_sink(
    client: *const callplus_client,
    callback: callplus_media_sink_callback,
    user_data: *mut c_void,
) -> callplus_result {
    boundary_result(|| {
        // SAFETY: forwarded contract.
        let handle = unsafe { try_ref(client)? };
        let media = handle.media.as_ref().ok_or(callplus_result::InvalidState)?;
        media.sink.set(sink_callback(callback, user_data));
        Ok(())
    })
}

/// `mute_all_remote_audio`: while `muted`, no remote user's audio reaches the media sink
/// callback (nothing to play); it is still received, so AUDIO_LEVEL and MEDIA_STATS events go
/// on, and unmuting delivers again at once. Holds across calls until changed; what this user
/// sends is untouched (that is `callplus_client_set_microphone_enabled`).
///
/// Returns `OK`; `INVALID_STATE` when the client was connected without `enable_media` (the app
/// plays remote audio itself); `NULL_PARAMETER` for a NULL client. Does not block.
///
/// **Thread:** any, also from an event or media sink callback.
///
/// # Safety
/// `client` must be NULL or a live client.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_client_mute_all_remote_audio(
    client: *const callplus_client,
    muted: bool,
) -> callplus_result {
    boundary_result(|| {
        // SAFETY: forwarded contract.
        let handle = unsafe { try_ref(client)? };
        // Without built-in media the client answers INVALID_STATE itself.
        handle.client()?.mute_all_remote_audio(muted).map_err(callplus_result::from)
    })
}
