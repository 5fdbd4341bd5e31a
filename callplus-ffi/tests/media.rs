//! Built-in media through the C API, called from Rust the way C calls it: two clients connected
//! with `enable_media` on 127.0.0.1 (loopback ICE) call each other through a real server.
//! Alice's microphone and camera are the built-in tone and test pattern; Bob is an app that
//! feeds its own Opus and VP8 samples (made by the same test encoders, pushed from its own
//! thread at their real-time pace). Both receive the other's frames through the media sink
//! callback and read media events through the event callback.
//!
//! Every wait is for a real frame or event, bounded by [`WAIT`]. The only waits expected to
//! run to their end are the bounded checks that something does *not* happen (no audio while the
//! microphone is off), and those are measured in frames of the other kind, not in time.
#![allow(clippy::unwrap_used, clippy::expect_used, unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString, c_char, c_void};
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use callplus::*;
use callplus_media::{AudioConfig, MediaSource, TestPatternSource, ToneSource, VideoConfig};
use common::TestServer;

mod common;

/// Generous: two cores shared with other builds, VP8 encoders, debug builds.
const WAIT: Duration = Duration::from_secs(30);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn text(p: *const c_char) -> Option<String> {
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_owned())
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// A remote frame as the sink callback saw it (copied: the C frame is borrowed).
#[derive(Debug, Clone)]
struct Frame {
    call_id: String,
    data: Vec<u8>,
    rtp_timestamp: u32,
    timestamp_us: i64,
    duration_us: u32,
    keyframe: bool,
}

/// An event as the event callback saw it.
#[derive(Debug, Clone)]
struct Ev {
    kind: callplus_event_type,
    call_id: Option<String>,
    user_id: Option<String>,
    device_id: Option<String>,
    media_kind: callplus_media_kind,
    audio_level: u32,
    time_ms: i64,
    disabled: bool,
    stats: Option<Report>,
}

/// A MEDIA_STATS report as read through the accessors.
#[derive(Debug, Clone)]
struct Report {
    send_loss_pct: f64,
    rtt_ms: f64,
    /// Per peer: user, receive loss %, kbit/s.
    peers: Vec<(String, f64, f64)>,
}

/// What one client's callbacks saw.
#[derive(Default)]
struct Seen {
    frames: Mutex<HashMap<(String, callplus_media_kind), Vec<Frame>>>,
    events: Mutex<Vec<Ev>>,
    changed: Condvar,
    /// Set by VIDEO_KEYFRAME_REQUESTED; the app's camera thread answers it.
    keyframe_wanted: AtomicBool,
    /// Set once `callplus_client_free` of the client returned.
    freed: AtomicBool,
    /// Callback invocations that began, or were still running, after `freed` was set: each one
    /// breaks the guarantee of `callplus_client_free`.
    late_calls: AtomicUsize,
    /// Callback invocations so far.
    calls: AtomicUsize,
    /// Each callback takes about this long (an app that does real work in it), so that some
    /// invocation is running when the client is freed.
    callback_work: Duration,
}

impl Seen {
    /// What every callback does first and last: counts the invocation, and counts it as late
    /// when the client was already freed.
    fn enter(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.freed.load(Ordering::SeqCst) {
            self.late_calls.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn leave(&self) {
        if !self.callback_work.is_zero() {
            std::thread::sleep(self.callback_work);
        }
        if self.freed.load(Ordering::SeqCst) {
            self.late_calls.fetch_add(1, Ordering::SeqCst);
        }
    }
}

unsafe extern "C" fn on_frame(user_data: *mut c_void, frame: *const callplus_media_frame) {
    let seen = unsafe { &*user_data.cast::<Seen>() };
    seen.enter();
    let f = unsafe { &*frame };
    let data = unsafe { std::slice::from_raw_parts(f.data, f.len) }.to_vec();
    let key = (text(f.user_id).unwrap(), f.kind);
    let frame = Frame {
        call_id: text(f.call_id).unwrap(),
        data,
        rtp_timestamp: f.rtp_timestamp,
        timestamp_us: f.timestamp_us,
        duration_us: f.duration_us,
        keyframe: f.keyframe,
    };
    lock(&seen.frames).entry(key).or_default().push(frame);
    seen.changed.notify_all();
    seen.leave();
}

unsafe extern "C" fn on_event(user_data: *mut c_void, event: *const callplus_event) {
    let seen = unsafe { &*user_data.cast::<Seen>() };
    seen.enter();
    let ev = unsafe {
        let stats = callplus_event_stats(event);
        Ev {
            kind: callplus_event_kind(event),
            call_id: text(callplus_event_call_id(event)),
            user_id: text(callplus_event_user_id(event)),
            device_id: text(callplus_event_device_id(event)),
            media_kind: callplus_event_media_kind(event),
            audio_level: callplus_event_audio_level(event),
            time_ms: callplus_event_time_ms(event),
            disabled: callplus_event_disabled(event),
            stats: (!stats.is_null()).then(|| {
                let peers = (0..callplus_media_stats_peer_count(stats))
                    .map(|i| {
                        (
                            text(callplus_media_stats_peer_user_id(stats, i)).unwrap(),
                            callplus_media_stats_peer_recv_loss_pct(stats, i),
                            callplus_media_stats_peer_bitrate_kbps(stats, i),
                        )
                    })
                    .collect();
                Report {
                    send_loss_pct: callplus_media_stats_send_loss_pct(stats),
                    rtt_ms: callplus_media_stats_rtt_ms(stats),
                    peers,
                }
            }),
        }
    };
    if ev.kind == callplus_event_type::VideoKeyframeRequested {
        seen.keyframe_wanted.store(true, Ordering::SeqCst);
    }
    lock(&seen.events).push(ev);
    seen.changed.notify_all();
    seen.leave();
}

impl Seen {
    /// Waits (at most [`WAIT`]) until `done` holds for the frames.
    fn frames_until<T>(
        &self,
        what: &str,
        mut done: impl FnMut(&HashMap<(String, callplus_media_kind), Vec<Frame>>) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + WAIT;
        let mut frames = lock(&self.frames);
        loop {
            if let Some(t) = done(&frames) {
                return t;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out waiting for {what}");
            frames = self.changed.wait_timeout(frames, left).unwrap().0;
        }
    }

    /// How many frames of `user`'s `kind` arrived so far.
    fn count(&self, user: &str, kind: callplus_media_kind) -> usize {
        lock(&self.frames).get(&(user.to_owned(), kind)).map_or(0, Vec::len)
    }

    /// Waits until at least `n` frames of `user`'s `kind` arrived; returns all of them.
    fn frames(&self, user: &str, kind: callplus_media_kind, n: usize) -> Vec<Frame> {
        let key = (user.to_owned(), kind);
        self.frames_until(&format!("{n} {kind:?} frames of {user}"), |f| {
            f.get(&key).filter(|v| v.len() >= n).cloned()
        })
    }

    /// The first event matching `pred` (events are kept; each wait scans them all).
    fn expect(&self, what: &str, pred: impl Fn(&Ev) -> bool) -> Ev {
        let deadline = Instant::now() + WAIT;
        let mut events = lock(&self.events);
        loop {
            if let Some(ev) = events.iter().find(|e| pred(e)) {
                return ev.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out waiting for {what}; events: {:#?}", *events);
            events = self.changed.wait_timeout(events, left).unwrap().0;
        }
    }
}

/// A client pointer the test's threads share (the C API allows any thread).
#[derive(Clone, Copy)]
struct ClientPtr(*mut callplus_client);
unsafe impl Send for ClientPtr {}
unsafe impl Sync for ClientPtr {}

impl ClientPtr {
    /// The pointer (a method, so closures capture the `Send` wrapper, not the raw field).
    fn get(self) -> *mut callplus_client {
        self.0
    }
}

/// A connected client whose callbacks write to `seen`. Freed when dropped, also when a failed
/// assertion unwinds: it holds `seen`, so no callback can outlive what it writes to.
struct TestClient {
    ptr: ClientPtr,
    seen: Arc<Seen>,
}

impl TestClient {
    fn get(&self) -> *mut callplus_client {
        self.ptr.get()
    }

    /// Frees the client and marks `seen`: from here on no callback may run.
    fn free(self) {
        drop(self);
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        unsafe { callplus_client_free(self.ptr.get()) };
        self.seen.freed.store(true, Ordering::SeqCst);
    }
}

impl TestServer {
    fn endpoint(&self) -> CString {
        CString::new(format!("http://{}", self.server().grpc_addr())).unwrap()
    }

    fn token(&self, user: &str) -> CString {
        CString::new(self.server().mint_token(user, Duration::from_secs(3600)).unwrap()).unwrap()
    }

    /// Connects `user` with `options` (on loopback) and installs both callbacks on `seen`.
    fn media_client(&self, user: &str, options: callplus_client_options, seen: &Arc<Seen>) -> TestClient {
        let options = callplus_client_options { media_bind_address: c"127.0.0.1".as_ptr(), ..options };
        let mut client = null_mut();
        let user_data = Arc::as_ptr(seen).cast_mut().cast::<c_void>();
        unsafe {
            let r = callplus_client_connect_with_options(
                self.endpoint().as_ptr(),
                self.token(user).as_ptr(),
                &options,
                &mut client,
            );
            assert_eq!(r, callplus_result::Ok, "{user} connects");
            assert_eq!(
                callplus_client_set_media_sink(client, Some(on_frame), user_data),
                callplus_result::Ok
            );
            assert_eq!(
                callplus_client_set_event_callback(client, Some(on_event), user_data),
                callplus_result::Ok
            );
        }
        TestClient { ptr: ClientPtr(client), seen: Arc::clone(seen) }
    }
}

/// `{0}`, as C apps start their options.
fn zeroed() -> callplus_client_options {
    // SAFETY: every field is a pointer, a bool or an integer, for which all-zero is valid (NULL,
    // false, 0) and means "not set".
    unsafe { std::mem::zeroed() }
}

/// Bob's app: a microphone (a 660 Hz tone) and a camera (a small test pattern) encoded by the
/// test encoders and pushed through the C API on its own thread at their real-time pace, until
/// `stop` or until a push after a successful one says the call is over. Remembers every sample
/// it pushed.
struct AppDevices {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pushed: Arc<Mutex<HashSet<Vec<u8>>>>,
}

impl AppDevices {
    fn start(client: ClientPtr, seen: Arc<Seen>) -> AppDevices {
        let stop = Arc::new(AtomicBool::new(false));
        let pushed = Arc::new(Mutex::new(HashSet::new()));
        let (thread_stop, thread_pushed) = (Arc::clone(&stop), Arc::clone(&pushed));
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let mut mic = ToneSource::new(660.0, 0.5, AudioConfig::default()).unwrap();
                let size = VideoConfig { width: 160, height: 120, fps: 15, ..VideoConfig::default() };
                let mut camera = TestPatternSource::new(size).unwrap();
                let (mut audio_ok, mut video_ok) = (false, false);
                while !thread_stop.load(Ordering::SeqCst) {
                    if seen.keyframe_wanted.swap(false, Ordering::SeqCst) {
                        camera.request_keyframe();
                    }
                    let (kind, sample) = tokio::select! {
                        s = mic.next_sample() => (callplus_media_kind::Audio, s.unwrap()),
                        s = camera.next_sample() => (callplus_media_kind::Video, s.unwrap()),
                    };
                    let duration = sample.duration.as_micros() as u32;
                    // Remembered before the push: it may arrive at Alice before the push returns.
                    let fresh = lock(&thread_pushed).insert(sample.data.to_vec());
                    let r = unsafe {
                        match kind {
                            callplus_media_kind::Audio => callplus_client_push_audio_sample(
                                client.get(),
                                sample.data.as_ptr(),
                                sample.data.len(),
                                duration,
                            ),
                            _ => callplus_client_push_video_sample(
                                client.get(),
                                sample.data.as_ptr(),
                                sample.data.len(),
                                duration,
                            ),
                        }
                    };
                    let ok = if kind == callplus_media_kind::Audio { &mut audio_ok } else { &mut video_ok };
                    match r {
                        callplus_result::Ok => *ok = true,
                        // Bob's app keeps capturing while his device is off: refused, never sent.
                        callplus_result::MicrophoneClosed | callplus_result::CameraClosed => {
                            if fresh {
                                lock(&thread_pushed).remove(sample.data.as_ref());
                            }
                        }
                        callplus_result::NotInCall if *ok => {
                            if fresh {
                                lock(&thread_pushed).remove(sample.data.as_ref());
                            }
                            break;
                        }
                        other => panic!("pushing {kind:?}: {other:?}"),
                    }
                }
            });
        });
        AppDevices { stop, thread: Some(thread), pushed }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the app's device thread");
        }
    }
}

impl Drop for AppDevices {
    /// Also when a failed assertion unwinds: the thread must not push into a freed client.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `kind` frames from `user` stopped: after `flush` frames of the other kind `clock` (what was
/// in flight arrives meanwhile), `window` more of them arrive and not one of `kind`.
fn assert_stopped(seen: &Seen, user: &str, kind: callplus_media_kind, clock: callplus_media_kind, why: &str) {
    let flush = seen.count(user, clock) + 8;
    seen.frames(user, clock, flush);
    let before = seen.count(user, kind);
    seen.frames(user, clock, flush + 15);
    assert_eq!(seen.count(user, kind), before, "{kind:?} of {user} arrived after {why}");
}

/// Strictly increasing media time, as a player needs it.
fn assert_increasing(frames: &[Frame], what: &str) {
    for pair in frames.windows(2) {
        assert!(pair[1].timestamp_us > pair[0].timestamp_us, "{what}: {pair:?}");
        assert_ne!(pair[1].rtp_timestamp, pair[0].rtp_timestamp, "{what}");
    }
}

#[test]
fn media_flows_both_ways_through_the_c_api() {
    let started = Instant::now();
    let server = TestServer::start();
    let (alice_seen, bob_seen) = (Arc::new(Seen::default()), Arc::new(Seen::default()));
    let alice = server.media_client(
        "alice",
        callplus_client_options { enable_media: true, tone_hz: 440, test_pattern: true, ..zeroed() },
        &alice_seen,
    );
    let bob = server.media_client(
        "bob",
        callplus_client_options { enable_media: true, app_microphone: true, app_camera: true, ..zeroed() },
        &bob_seen,
    );
    let (a, b) = (alice.get(), bob.get());
    use callplus_event_type as K;
    use callplus_media_kind::{Audio, Video};
    use callplus_result as R;

    unsafe {
        // Pushing outside a call, or into a device the app does not own, is refused with a code.
        let sample = [0xf8u8, 0xff, 0xfe];
        assert_eq!(callplus_client_push_audio_sample(b, sample.as_ptr(), 3, 20_000), R::NotInCall);
        assert_eq!(callplus_client_push_audio_sample(a, sample.as_ptr(), 3, 20_000), R::InvalidState);
        assert_eq!(callplus_client_push_video_sample(a, sample.as_ptr(), 3, 66_666), R::InvalidState);

        // Alice calls, Bob answers: from here the clients set up the media by themselves.
        let mut call_id = null_mut();
        let callees = [c"bob".as_ptr()];
        let r = callplus_client_start_call(a, callees.as_ptr(), 1, 1, 2, null(), &mut call_id);
        assert_eq!(r, R::Ok);
        let call = text(callplus_string_data(call_id)).unwrap();
        callplus_string_free(call_id);
        let on_call = |e: &Ev| e.call_id.as_deref() == Some(call.as_str());
        bob_seen.expect("the invitation", |e| e.kind == K::ReceivedCall && on_call(e));
        let call_c = CString::new(call.clone()).unwrap();
        assert_eq!(callplus_client_accept(b, call_c.as_ptr()), R::Ok);
        bob_seen.expect("connected", |e| e.kind == K::CallConnected && on_call(e));
        alice_seen.expect("connected", |e| e.kind == K::CallConnected && on_call(e));
        let mut devices = AppDevices::start(bob.ptr, Arc::clone(&bob_seen));

        // Alice's tone and pattern reach Bob's sink: real Opus packets and VP8 frames in order.
        let audio = bob_seen.frames("alice", Audio, 50);
        assert!(audio.iter().all(|f| f.call_id == call && !f.data.is_empty() && f.keyframe));
        assert!(audio.iter().all(|f| f.duration_us == 20_000), "20 ms Opus packets");
        assert_increasing(&audio, "alice's audio at bob");
        let video = bob_seen.frames("alice", Video, 10);
        assert!(video[0].keyframe, "the first video frame delivered is a key frame");
        assert!(video.iter().all(|f| f.call_id == call && f.duration_us == 0));
        assert_increasing(&video, "alice's video at bob");

        // Bob's app-fed samples reach Alice byte for byte.
        let audio = alice_seen.frames("bob", Audio, 50);
        let video = alice_seen.frames("bob", Video, 10);
        {
            let pushed = lock(&devices.pushed);
            assert!(audio.iter().chain(&video).all(|f| pushed.contains(&f.data)), "frames Bob never pushed");
        }
        assert_increasing(&audio, "bob's audio at alice");
        assert!(video[0].keyframe, "Bob's camera answered the key frame request");
        bob_seen
            .expect("a key frame request", |e| e.kind == K::VideoKeyframeRequested && e.call_id.is_none());
        // The local user's own media is never delivered.
        assert!(lock(&alice_seen.frames).keys().all(|(user, _)| user == "bob"));
        assert!(lock(&bob_seen.frames).keys().all(|(user, _)| user == "alice"));

        // Media events arrive with the call events, with real values.
        let from = |user: &'static str, kind: callplus_event_type, media: callplus_media_kind| {
            move |e: &Ev| e.kind == kind && e.user_id.as_deref() == Some(user) && e.media_kind == media
        };
        let peer =
            bob_seen.expect("the media path up", from("alice", K::PeerConnected, callplus_media_kind::None));
        assert!(peer.device_id.is_some() && on_call(&peer));
        bob_seen.expect("alice's audio available", from("alice", K::UserMediaAvailable, Audio));
        bob_seen.expect("alice's video available", from("alice", K::UserMediaAvailable, Video));
        for (seen, user) in [(&bob_seen, "alice"), (&alice_seen, "bob")] {
            let first = seen.expect("a first audio frame", from(user, K::FirstFrame, Audio));
            assert!((now_ms() - 60_000..=now_ms()).contains(&first.time_ms), "{first:?}");
            seen.expect("a first video frame", from(user, K::FirstFrame, Video));
            // Half-scale tones on both sides: about 50.
            let level = seen
                .expect("an audio level", |e| e.kind == K::AudioLevel && e.user_id.as_deref() == Some(user));
            assert!((35..=65).contains(&level.audio_level), "{user}'s level: {level:?}");
            // The server stamped the call's first frame.
            seen.expect("the call's first frame time", |e| e.kind == K::CallFirstFrameTime && on_call(e));
        }
        // Alice's tone source knows its own level.
        alice_seen.expect("alice's own level", |e| {
            e.kind == K::AudioLevel && e.user_id.as_deref() == Some("alice")
        });
        // A status report once the streams run for a while: one peer, sane numbers.
        let report = alice_seen.expect("a full status report", |e| {
            e.kind == K::MediaStats
                && e.stats.as_ref().is_some_and(|r| r.peers.len() == 1 && r.peers[0].2 > 10.0)
        });
        let Report { send_loss_pct: send_loss, rtt_ms: rtt, peers } = report.stats.clone().unwrap();
        assert!(on_call(&report));
        assert!((0.0..=100.0).contains(&send_loss), "{report:?}");
        assert!(rtt == -1.0 || (0.0..1000.0).contains(&rtt), "{report:?}");
        let (user, loss, kbps) = &peers[0];
        assert_eq!(user, "bob");
        assert!((0.0..=100.0).contains(loss) && (10.0..2000.0).contains(kbps), "{report:?}");

        // Microphone off at Alice: the real track stops (her video goes on), and Bob is told.
        assert_eq!(callplus_client_set_microphone_enabled(a, false), R::Ok);
        bob_seen.expect("alice's microphone off", |e| {
            e.kind == K::RemoteMicrophoneStateChanged && e.user_id.as_deref() == Some("alice") && e.disabled
        });
        assert_stopped(&bob_seen, "alice", Audio, Video, "alice turned her microphone off");
        assert_eq!(callplus_client_set_microphone_enabled(a, true), R::Ok);
        let n = bob_seen.count("alice", Audio);
        bob_seen.frames("alice", Audio, n + 5);

        // Bob mutes all remote audio: Alice's audio no longer reaches his sink while her video
        // goes on; unmuted, it arrives again.
        assert_eq!(callplus_client_mute_all_remote_audio(b, true), R::Ok);
        assert_stopped(&bob_seen, "alice", Audio, Video, "bob muted remote audio");
        assert_eq!(callplus_client_mute_all_remote_audio(b, false), R::Ok);
        let n = bob_seen.count("alice", Audio);
        bob_seen.frames("alice", Audio, n + 5);

        // Bob turns his microphone off while his app keeps pushing: the pushes are refused
        // (MICROPHONE_CLOSED) and none of them ever reaches Alice, also not after he turns it
        // back on (every frame she gets is one that was accepted).
        assert_eq!(callplus_client_set_microphone_enabled(b, false), R::Ok);
        assert_stopped(&alice_seen, "bob", Audio, Video, "bob turned his microphone off");
        assert_eq!(callplus_client_set_microphone_enabled(b, true), R::Ok);
        let n = alice_seen.count("bob", Audio);
        let after = alice_seen.frames("bob", Audio, n + 10);
        {
            let pushed = lock(&devices.pushed);
            assert!(after.iter().all(|f| pushed.contains(&f.data)), "audio Bob pushed while muted");
        }

        // Camera off at Alice: her video stops, her audio goes on; on again starts with a key frame.
        assert_eq!(callplus_client_set_camera_enabled(a, false), R::Ok);
        assert_stopped(&bob_seen, "alice", Video, Audio, "alice turned her camera off");
        let n = bob_seen.count("alice", Video);
        assert_eq!(callplus_client_set_camera_enabled(a, true), R::Ok);
        let again = bob_seen.frames("alice", Video, n + 3);
        assert!(again[n].keyframe, "video resumes with a key frame");

        // Hang up: the call ends on both sides, Bob's app is told it is no longer in a call.
        assert_eq!(callplus_client_hangup(a, null()), R::Ok);
        alice_seen.expect("ended", |e| e.kind == K::CallEnded && on_call(e));
        bob_seen.expect("ended", |e| e.kind == K::CallEnded && on_call(e));
        devices.stop();
        assert_eq!(callplus_client_push_audio_sample(b, sample.as_ptr(), 3, 20_000), R::NotInCall);
    }
    alice.free();
    bob.free();
    for seen in [&alice_seen, &bob_seen] {
        assert_eq!(seen.late_calls.load(Ordering::SeqCst), 0, "a callback ran after free returned");
    }
    eprintln!("media through the C API: {:.1} s", started.elapsed().as_secs_f64());
}

/// `callplus_client_free` while remote frames and media events flow, repeated: when it returns
/// every callback invocation has returned, and none begins afterwards. The callbacks take a
/// little while (as an app's might), so that one is usually running at the moment of the free;
/// the clients freed in a round are watched through the rounds after it.
#[test]
fn no_callback_runs_once_free_returned() {
    const ROUNDS: usize = 3;
    use callplus_event_type as K;
    use callplus_media_kind::Audio;
    use callplus_result as R;
    let server = TestServer::start();
    let options =
        callplus_client_options { enable_media: true, tone_hz: 440, test_pattern: true, ..zeroed() };
    let mut watched: Vec<Arc<Seen>> = Vec::new();
    for round in 0..ROUNDS {
        let seen = || Arc::new(Seen { callback_work: Duration::from_millis(2), ..Seen::default() });
        let (caller_seen, callee_seen) = (seen(), seen());
        let (caller_name, callee_name) = (format!("caller{round}"), format!("callee{round}"));
        let caller = server.media_client(&caller_name, options, &caller_seen);
        let callee = server.media_client(&callee_name, options, &callee_seen);
        unsafe {
            let mut call_id = null_mut();
            let callee_c = CString::new(callee_name.clone()).unwrap();
            let callees = [callee_c.as_ptr()];
            let r = callplus_client_start_call(caller.get(), callees.as_ptr(), 1, 1, 2, null(), &mut call_id);
            assert_eq!(r, R::Ok);
            callee_seen.expect("the invitation", |e| e.kind == K::ReceivedCall);
            assert_eq!(callplus_client_accept(callee.get(), callplus_string_data(call_id)), R::Ok);
            callplus_string_free(call_id);
        }
        // Frames and media events are flowing both ways.
        callee_seen.frames(&caller_name, Audio, 10);
        caller_seen.frames(&callee_name, Audio, 10);
        for seen in [&caller_seen, &callee_seen] {
            seen.expect("an audio level", |e| e.kind == K::AudioLevel);
        }
        // Freed mid-stream, one side first, then the other; which one goes first alternates.
        if round % 2 == 0 {
            caller.free();
            callee.free();
        } else {
            callee.free();
            caller.free();
        }
        watched.extend([caller_seen, callee_seen]);
        for (i, seen) in watched.iter().enumerate() {
            assert!(seen.calls.load(Ordering::SeqCst) > 0);
            assert_eq!(
                seen.late_calls.load(Ordering::SeqCst),
                0,
                "client {i}: a callback ran after free returned"
            );
        }
    }
}

#[test]
fn media_functions_refuse_bad_input_with_codes() {
    let server = TestServer::start();
    let seen = Arc::new(Seen::default());
    let bob = server.media_client(
        "bob",
        callplus_client_options { enable_media: true, app_microphone: true, ..zeroed() },
        &seen,
    );
    let b = bob.get();
    let sample = [0xf8u8, 0xff, 0xfe];
    let big = vec![0u8; 16 * 1024 + 1];
    use callplus_result as R;
    unsafe {
        // NULL client, NULL data, empty and oversized samples, bad durations.
        assert_eq!(callplus_client_push_audio_sample(null(), sample.as_ptr(), 3, 20_000), R::NullParameter);
        assert_eq!(callplus_client_push_video_sample(null(), sample.as_ptr(), 3, 20_000), R::NullParameter);
        assert_eq!(callplus_client_set_media_sink(null(), Some(on_frame), null_mut()), R::NullParameter);
        assert_eq!(callplus_client_push_audio_sample(b, null(), 3, 20_000), R::NullParameter);
        assert_eq!(callplus_client_push_audio_sample(b, null(), 0, 20_000), R::NullParameter);
        assert_eq!(callplus_client_push_audio_sample(b, sample.as_ptr(), 0, 20_000), R::ParamError);
        assert_eq!(callplus_client_push_audio_sample(b, big.as_ptr(), big.len(), 20_000), R::ParamError);
        assert_eq!(callplus_client_push_audio_sample(b, sample.as_ptr(), 3, 0), R::ParamError);
        assert_eq!(callplus_client_push_audio_sample(b, sample.as_ptr(), 3, 120_001), R::ParamError);
        assert_eq!(callplus_client_push_video_sample(b, sample.as_ptr(), 3, 1_000_001), R::ParamError);
        // A device the app did not ask to feed; no call.
        assert_eq!(callplus_client_push_video_sample(b, sample.as_ptr(), 3, 66_666), R::InvalidState);
        assert_eq!(callplus_client_push_audio_sample(b, sample.as_ptr(), 3, 20_000), R::NotInCall);
        // Removing and re-installing the sink is fine at any time.
        assert_eq!(callplus_client_set_media_sink(b, None, null_mut()), R::Ok);
        // The tiny layer can be chosen before any call (it holds until changed); the user id
        // must be one.
        assert_eq!(callplus_client_set_video_tiny(b, c"alice".as_ptr(), true), R::Ok);
        assert_eq!(callplus_client_set_video_tiny(b, c"alice".as_ptr(), false), R::Ok);
        assert_eq!(callplus_client_set_video_tiny(b, c"".as_ptr(), true), R::UserIdInvalid);
        assert_eq!(callplus_client_set_video_tiny(b, null(), true), R::NullParameter);
        assert_eq!(callplus_client_set_video_tiny(null(), c"alice".as_ptr(), true), R::NullParameter);

        // A client without media has no media to feed or to receive.
        let mut plain = null_mut();
        let r = callplus_client_connect_with_options(
            server.endpoint().as_ptr(),
            server.token("carol").as_ptr(),
            null(),
            &mut plain,
        );
        assert_eq!(r, R::Ok);
        assert_eq!(callplus_client_set_media_sink(plain, Some(on_frame), null_mut()), R::InvalidState);
        assert_eq!(callplus_client_push_audio_sample(plain, sample.as_ptr(), 3, 20_000), R::InvalidState);
        assert_eq!(callplus_client_mute_all_remote_audio(plain, true), R::InvalidState);
        assert_eq!(callplus_client_mute_all_remote_audio(null(), true), R::NullParameter);
        assert_eq!(callplus_client_set_video_tiny(plain, c"alice".as_ptr(), true), R::InvalidState);
        callplus_client_free(plain);

        // Inconsistent options are refused before anything connects; nothing is written.
        let mut out = std::ptr::dangling_mut::<callplus_client>();
        let (endpoint, token) = (server.endpoint(), server.token("dave"));
        for bad in [
            callplus_client_options { tone_hz: 440, ..zeroed() },
            callplus_client_options { enable_media: true, tone_hz: 440, app_microphone: true, ..zeroed() },
            callplus_client_options {
                enable_media: true,
                media_bind_address: c"nowhere".as_ptr(),
                ..zeroed()
            },
            callplus_client_options { no_simulcast: true, ..zeroed() },
        ] {
            let r = callplus_client_connect_with_options(endpoint.as_ptr(), token.as_ptr(), &bad, &mut out);
            assert_eq!(r, R::ParamError, "{bad:?}");
        }
        let r = callplus_client_connect_with_options(endpoint.as_ptr(), token.as_ptr(), null(), null_mut());
        assert_eq!(r, R::NullParameter);
        let r = callplus_client_connect_with_options(null(), token.as_ptr(), null(), &mut out);
        assert_eq!(r, R::NullParameter);
        assert_eq!(out, std::ptr::dangling_mut());
    }
    bob.free();
}

/// `no_simulcast`: through the SFU, a client connected with it sends its video in one layer.
/// Bob views both alice (connected with `no_simulcast`) and carol (the default, two layers)
/// tiny: carol's video switches to her tiny layer (half the width and height), alice's stays
/// full, frames after the switch included.
#[test]
fn a_client_without_simulcast_is_seen_full_through_the_sfu() {
    let server = TestServer::start();
    let [alice_seen, bob_seen, carol_seen] = [(); 3].map(|()| Arc::new(Seen::default()));
    let camera = callplus_client_options { enable_media: true, test_pattern: true, ..zeroed() };
    let alice = server.media_client(
        "alice",
        callplus_client_options { tone_hz: 440, no_simulcast: true, ..camera },
        &alice_seen,
    );
    let bob = server.media_client(
        "bob",
        callplus_client_options { enable_media: true, tone_hz: 660, ..zeroed() },
        &bob_seen,
    );
    let carol = server.media_client("carol", callplus_client_options { tone_hz: 880, ..camera }, &carol_seen);
    use callplus_event_type as K;
    use callplus_media_kind::Video;
    use callplus_result as R;
    let full = (320, 240);
    // The sizes of the key frames of `user` at bob, from the `from`th frame on.
    let key_sizes = |all: &HashMap<(String, callplus_media_kind), Vec<Frame>>, user: &str, from: usize| {
        all.get(&(user.to_owned(), Video))
            .map(|frames| {
                frames[from.min(frames.len())..]
                    .iter()
                    .filter(|f| f.keyframe)
                    .map(|f| {
                        callplus_media::vp8::keyframe_dimensions(&f.data).expect("a key frame has a size")
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    unsafe {
        let (a, b, c) = (alice.get(), bob.get(), carol.get());
        let mut call_id = null_mut();
        let callees = [c"bob".as_ptr(), c"carol".as_ptr()];
        // MULTI, AUDIO_VIDEO: through the server's SFU.
        assert_eq!(callplus_client_start_call(a, callees.as_ptr(), 2, 2, 2, null(), &mut call_id), R::Ok);
        let call = text(callplus_string_data(call_id)).unwrap();
        callplus_string_free(call_id);
        let call_c = CString::new(call.clone()).unwrap();
        let on_call = |e: &Ev| e.call_id.as_deref() == Some(call.as_str());
        for (client, seen) in [(b, &bob_seen), (c, &carol_seen)] {
            seen.expect("the invitation", |e| e.kind == K::ReceivedCall && on_call(e));
            assert_eq!(callplus_client_accept(client, call_c.as_ptr()), R::Ok);
        }
        // Both full at first.
        for user in ["alice", "carol"] {
            bob_seen.frames_until(&format!("a full key frame of {user} at bob"), |all| {
                key_sizes(all, user, 0).contains(&full).then_some(())
            });
        }
        let (alice_from, carol_from) = (bob_seen.count("alice", Video), bob_seen.count("carol", Video));
        assert_eq!(callplus_client_set_video_tiny(b, c"alice".as_ptr(), true), R::Ok);
        assert_eq!(callplus_client_set_video_tiny(b, c"carol".as_ptr(), true), R::Ok);
        bob_seen.frames_until("carol's tiny layer at bob", |all| {
            key_sizes(all, "carol", carol_from).contains(&(160, 120)).then_some(())
        });
        // Alice's video goes on at bob, in the one layer she sends, a second after carol's
        // switch (a tiny layer of hers would have reached him with carol's).
        let n = bob_seen.count("alice", Video);
        bob_seen.frames("alice", Video, n + 15);
        let alice_keys = key_sizes(&lock(&bob_seen.frames), "alice", 0);
        assert!(alice_keys.iter().all(|&size| size == full), "alice's key frames at bob: {alice_keys:?}");
        assert!(bob_seen.count("alice", Video) > alice_from);
        assert_eq!(callplus_client_hangup(a, null()), R::Ok);
        alice_seen.expect("the call ends for alice", |e| e.kind == K::CallEnded && on_call(e));
    }
    alice.free();
    bob.free();
    carol.free();
}

#[test]
fn video_pushed_into_an_audio_call_is_refused() {
    let server = TestServer::start();
    let (erin_seen, frank_seen) = (Arc::new(Seen::default()), Arc::new(Seen::default()));
    let erin = server.media_client(
        "erin",
        callplus_client_options { enable_media: true, app_camera: true, ..zeroed() },
        &erin_seen,
    );
    let frank =
        server.media_client("frank", callplus_client_options { enable_media: true, ..zeroed() }, &frank_seen);
    let (e, f) = (erin.get(), frank.get());
    use callplus_event_type as K;
    use callplus_result as R;
    unsafe {
        let mut call_id = null_mut();
        let callees = [c"frank".as_ptr()];
        // An AUDIO call (media type 1).
        assert_eq!(callplus_client_start_call(e, callees.as_ptr(), 1, 1, 1, null(), &mut call_id), R::Ok);
        let call = text(callplus_string_data(call_id)).unwrap();
        let on_call = |ev: &Ev| ev.call_id.as_deref() == Some(call.as_str());
        frank_seen.expect("the invitation", |ev| ev.kind == K::ReceivedCall && on_call(ev));
        assert_eq!(callplus_client_accept(f, callplus_string_data(call_id)), R::Ok);
        erin_seen.expect("connected", |ev| ev.kind == K::CallConnected && on_call(ev));
        let frame = [0x50u8, 0x02, 0x00];
        assert_eq!(
            callplus_client_push_video_sample(e, frame.as_ptr(), frame.len(), 66_666),
            R::NotVideoCall
        );
        callplus_string_free(call_id);
    }
    erin.free();
    frank.free();
}
