//! Remote media to the app: the frame a sink callback receives, the per-client callback slot,
//! and the `MediaSink` the client's media hands every remote frame to.

use std::ffi::{CString, c_char, c_void};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::ThreadId;

use callplus_media::{CallId, MediaKind, MediaSink, RemoteFrame, UserId};

use crate::enums::callplus_media_kind;
use crate::ffi::{boundary, cstring};

/// One remote media frame, as a media sink callback receives it. Borrowed: every pointer in it
/// is valid only during the callback; copy what you keep.
///
/// Fields may be added at the end in later versions (the library always hands a pointer to a
/// whole frame, so code compiled against this header keeps working).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct callplus_media_frame {
    /// The call the frame belongs to.
    pub call_id: *const c_char,
    /// The remote user who sent it (never this client's own user).
    pub user_id: *const c_char,
    /// AUDIO (an Opus packet) or VIDEO (a whole VP8 frame).
    pub kind: callplus_media_kind,
    /// The encoded bytes, `len` of them.
    pub data: *const u8,
    /// The number of bytes at `data` (never 0).
    pub len: usize,
    /// The RTP timestamp as sent (48 kHz clock for audio, 90 kHz for video).
    pub rtp_timestamp: u32,
    /// The frame's media time in microseconds since the first frame of this user's stream of
    /// this kind in this call (from the RTP timestamps, wrap-around handled): when to play it.
    pub timestamp_us: i64,
    /// How long the frame plays, in microseconds: read from the Opus packet for audio; 0 for
    /// video (it lasts until the next frame).
    pub duration_us: u32,
    /// A VP8 key frame (decoding can start here); always true for audio. The first video frame
    /// delivered of a stream is always a key frame: frames that cannot be decoded before it are
    /// not delivered.
    pub keyframe: bool,
}

/// A media sink callback: called with the `user_data` given to `callplus_client_set_media_sink`
/// and one frame borrowed for the duration of the call.
pub type callplus_media_sink_callback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, frame: *const callplus_media_frame)>;

/// The installed callback and its user data.
#[derive(Clone, Copy)]
pub(crate) struct SinkCallback {
    f: unsafe extern "C" fn(*mut c_void, *const callplus_media_frame),
    user_data: *mut c_void,
}

// SAFETY: the C API documents that `user_data` is used from the client's media threads; the app
// vouches that this is sound when it installs the callback.
unsafe impl Send for SinkCallback {}

/// Builds the callback of a C function pointer and user data.
pub(crate) fn sink_callback(f: callplus_media_sink_callback, user_data: *mut c_void) -> Option<SinkCallback> {
    f.map(|f| SinkCallback { f, user_data })
}

#[derive(Default)]
struct SlotState {
    callback: Option<SinkCallback>,
    /// The thread running the callback now, if any.
    running_on: Option<ThreadId>,
}

/// One client's sink callback: installed, replaced and removed by the app while the media's
/// receive tasks call it. Invocations are serialised, and removal waits for a running one.
#[derive(Default)]
pub(crate) struct SinkSlot {
    state: Mutex<SlotState>,
    changed: Condvar,
}

impl SinkSlot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Installs, replaces or (with `None`) removes the callback. Removal returns once no
    /// invocation runs any more (unless called from one), so the app may then free `user_data`.
    pub(crate) fn set(&self, callback: Option<SinkCallback>) {
        let me = std::thread::current().id();
        let mut st = self.lock();
        st.callback = callback;
        if callback.is_none() {
            while st.running_on.is_some_and(|t| t != me) {
                st = self.changed.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
        }
    }

    /// Hands one frame to the callback, if one is installed.
    fn deliver(&self, frame: &callplus_media_frame) {
        let me = std::thread::current().id();
        let callback = {
            let mut st = self.lock();
            while st.running_on.is_some() {
                if st.running_on == Some(me) {
                    // Re-entered from the callback itself: not delivered twice at once.
                    return;
                }
                st = self.changed.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
            let Some(callback) = st.callback else { return };
            st.running_on = Some(me);
            callback
        };
        // SAFETY: the app installed `f` for exactly this call; the frame outlives it.
        boundary(|| unsafe { (callback.f)(callback.user_data, frame) });
        self.lock().running_on = None;
        self.changed.notify_all();
    }
}

/// Turns 32-bit RTP timestamps into microseconds since the stream's first frame.
#[derive(Debug, Default)]
struct MediaClock {
    /// The last RTP timestamp and its unwrapped tick count.
    last: Option<(u32, i64)>,
}

impl MediaClock {
    /// The stream time of `rtp` at `clock_rate` Hz. A timestamp before the previous one (a
    /// reordered or retransmitted frame) yields an earlier time.
    fn micros(&mut self, rtp: u32, clock_rate: i64) -> i64 {
        let ticks = match self.last {
            None => 0,
            // The signed difference handles the 32-bit wrap-around.
            Some((last, ticks)) => ticks.saturating_add(i64::from(rtp.wrapping_sub(last) as i32)),
        };
        self.last = Some((rtp, ticks));
        // The peer chooses the timestamps: a stream of huge jumps must saturate, not overflow.
        let micros = i128::from(ticks) * 1_000_000 / i128::from(clock_rate.max(1));
        i64::try_from(micros).unwrap_or(if micros < 0 { i64::MIN } else { i64::MAX })
    }
}

/// How long an Opus packet plays, in microseconds; 0 when the packet is malformed.
pub(crate) fn opus_duration_us(packet: &[u8]) -> u32 {
    callplus_media::opus_packet::duration(packet)
        .map_or(0, |d| u32::try_from(d.as_micros()).unwrap_or(u32::MAX))
}

/// The sink of one remote user's media of one kind in one call: frames go to the client's
/// callback.
pub(crate) struct CallbackSink {
    slot: std::sync::Arc<SinkSlot>,
    call_id: CString,
    user_id: CString,
    kind: MediaKind,
    clock: MediaClock,
    /// A key frame was delivered: later frames can be decoded.
    decodable: bool,
}

impl CallbackSink {
    pub(crate) fn new(
        slot: std::sync::Arc<SinkSlot>,
        call_id: &CallId,
        user_id: &UserId,
        kind: MediaKind,
    ) -> Self {
        CallbackSink {
            slot,
            call_id: cstring(call_id.as_str()),
            user_id: cstring(user_id.as_str()),
            kind,
            clock: MediaClock::default(),
            decodable: false,
        }
    }
}

impl MediaSink for CallbackSink {
    fn on_frame(&mut self, frame: &RemoteFrame) -> std::io::Result<()> {
        self.decodable |= frame.keyframe;
        if frame.data.is_empty() || !self.decodable {
            return Ok(());
        }
        let (clock_rate, duration_us) = match self.kind {
            MediaKind::Audio => (48_000, opus_duration_us(&frame.data)),
            MediaKind::Video => (90_000, 0),
        };
        let c_frame = callplus_media_frame {
            call_id: self.call_id.as_ptr(),
            user_id: self.user_id.as_ptr(),
            kind: self.kind.into(),
            data: frame.data.as_ptr(),
            len: frame.data.len(),
            rtp_timestamp: frame.rtp_timestamp,
            timestamp_us: self.clock.micros(frame.rtp_timestamp, clock_rate),
            duration_us,
            keyframe: frame.keyframe,
        };
        self.slot.deliver(&c_frame);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;

    use super::*;

    #[test]
    fn rtp_timestamps_become_stream_time_across_the_wrap() {
        let mut clock = MediaClock::default();
        let start = u32::MAX - 959;
        assert_eq!(clock.micros(start, 48_000), 0);
        assert_eq!(clock.micros(start.wrapping_add(960), 48_000), 20_000);
        assert_eq!(clock.micros(start.wrapping_add(1920), 48_000), 40_000);
        // A late frame is placed before the previous one.
        assert_eq!(clock.micros(start.wrapping_add(960), 48_000), 20_000);
        let mut video = MediaClock::default();
        video.micros(7, 90_000);
        assert_eq!(video.micros(7 + 6000, 90_000), 66_666);
    }

    #[test]
    fn a_peer_jumping_its_timestamps_every_frame_saturates_the_clock() {
        let mut clock = MediaClock::default();
        let mut rtp = 0u32;
        let mut last = clock.micros(rtp, 48_000);
        for _ in 0..10_000 {
            rtp = rtp.wrapping_add(i32::MAX as u32);
            let now = clock.micros(rtp, 48_000);
            assert!(now >= last, "the clock only moves forward here");
            last = now;
        }
    }

    #[test]
    fn opus_durations_from_the_toc() {
        // Config 1 (SILK NB 20 ms), one frame.
        assert_eq!(opus_duration_us(&[1 << 3, 0xaa]), 20_000);
        // Config 31 (CELT FB 20 ms), code 1: two frames.
        assert_eq!(opus_duration_us(&[(31 << 3) | 1, 0]), 40_000);
        // Config 16 (CELT NB 2.5 ms), code 3 with 6 frames.
        assert_eq!(opus_duration_us(&[(16 << 3) | 3, 6]), 15_000);
        // Config 13 (hybrid 20 ms).
        assert_eq!(opus_duration_us(&[13 << 3]), 20_000);
        assert_eq!(opus_duration_us(&[]), 0);
        assert_eq!(opus_duration_us(&[3]), 0);
    }

    static FRAMES: AtomicUsize = AtomicUsize::new(0);
    static KEYFRAMES_FIRST: AtomicUsize = AtomicUsize::new(0);

    unsafe extern "C" fn first_is_key(user_data: *mut c_void, frame: *const callplus_media_frame) {
        let frame = unsafe { &*frame };
        let delivered = unsafe { &*user_data.cast::<AtomicUsize>() };
        if delivered.fetch_add(1, Ordering::SeqCst) == 0 && frame.keyframe {
            KEYFRAMES_FIRST.fetch_add(1, Ordering::SeqCst);
        }
        assert_eq!(frame.timestamp_us, if frame.keyframe { 0 } else { 66_666 });
    }

    #[test]
    fn video_starts_at_a_key_frame() {
        let slot = Arc::new(SinkSlot::default());
        let delivered = AtomicUsize::new(0);
        slot.set(sink_callback(Some(first_is_key), (&delivered as *const AtomicUsize).cast_mut().cast()));
        let (call, user) = (CallId::new("c1").unwrap(), UserId::new("bob").unwrap());
        let mut sink = CallbackSink::new(Arc::clone(&slot), &call, &user, MediaKind::Video);
        let frame = |rtp_timestamp, keyframe| RemoteFrame {
            kind: MediaKind::Video,
            data: Bytes::from_static(&[1, 2, 3]),
            rtp_timestamp,
            keyframe,
        };
        // A delta frame before any key frame cannot be decoded: not delivered.
        sink.on_frame(&frame(100, false)).unwrap();
        assert_eq!(delivered.load(Ordering::SeqCst), 0);
        sink.on_frame(&frame(6100, true)).unwrap();
        sink.on_frame(&frame(12_100, false)).unwrap();
        slot.set(None);
        assert_eq!(delivered.load(Ordering::SeqCst), 2);
        assert_eq!(KEYFRAMES_FIRST.load(Ordering::SeqCst), 1);
    }

    unsafe extern "C" fn count(user_data: *mut c_void, frame: *const callplus_media_frame) {
        let frame = unsafe { &*frame };
        assert_eq!(user_data as usize, 42);
        assert_eq!(frame.len, 2);
        FRAMES.fetch_add(1, Ordering::SeqCst);
    }

    #[test]
    fn frames_reach_the_installed_callback_only() {
        let slot = Arc::new(SinkSlot::default());
        let call = CallId::new("c1").unwrap();
        let user = UserId::new("bob").unwrap();
        let mut sink = CallbackSink::new(Arc::clone(&slot), &call, &user, MediaKind::Audio);
        let frame = RemoteFrame {
            kind: MediaKind::Audio,
            data: Bytes::from_static(&[8, 1]),
            rtp_timestamp: 5,
            keyframe: true,
        };
        sink.on_frame(&frame).unwrap();
        assert_eq!(FRAMES.load(Ordering::SeqCst), 0);
        slot.set(sink_callback(Some(count), 42 as *mut c_void));
        sink.on_frame(&frame).unwrap();
        sink.on_frame(&RemoteFrame { data: Bytes::new(), ..frame.clone() }).unwrap();
        assert_eq!(FRAMES.load(Ordering::SeqCst), 1);
        slot.set(None);
        sink.on_frame(&frame).unwrap();
        assert_eq!(FRAMES.load(Ordering::SeqCst), 1);
    }
}
