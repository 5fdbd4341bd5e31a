//! End-to-end media: a real server, real clients with `ClientOptions::media` and real WebRTC
//! between them, all on 127.0.0.1 (`WebRtcConfig::loopback()`). The tests only place, answer
//! and hang up calls; the clients set up, switch and stop the media by themselves.
//!
//! Every wait is for a real event, frame or closed channel, bounded by [`MEDIA_WAIT`]. The only
//! waits that are expected to run out are the bounded checks that something does *not* happen
//! (no video while it is off, no status report after the call).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use callplus_media::inspect::{IvfFile, decode_ogg_opus, dominant_frequency, read_ivf};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use callplus_media::lossy_relay::{ArmedLosses, LossyRelay};
use callplus_media::{ChannelSink, MediaEvent, MediaKind, MediaSink, RemoteFrame, TeeSink, VideoConfig};
use callplus_session::switchboard::SwitchboardConfig;
use callplus_session::{CallType, EndReason, ParticipantState, UserId};
use callplus_signal::client::{MediaEventStream, MediaOptions, SignalDirection, record_sink};
use callplus_tests::{
    ChangeMediaTypeResult, ClientOptions, Event, MediaType, Party, Setup, TcpProxy, TestServer, config,
    connected, ended, received, record_of, remote_state,
};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{Instant, timeout};

/// Generous: two cores shared with other builds, several peer connections and VP8 encoders.
const MEDIA_WAIT: Duration = Duration::from_secs(30);

/// Frame receivers by (remote user, kind), filled by the sink factory.
type Receivers = Arc<Mutex<HashMap<(String, MediaKind), UnboundedReceiver<RemoteFrame>>>>;

/// Where recordings go: `$CALLPLUS_MEDIA_RECORD_DIR` if set (to inspect them with ffprobe or
/// sox afterwards), else a temporary directory removed at the end.
fn record_dir(test: &str) -> (Option<tempfile::TempDir>, PathBuf) {
    match std::env::var_os("CALLPLUS_MEDIA_RECORD_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir).join(test);
            std::fs::create_dir_all(&dir).unwrap();
            (None, dir)
        }
        None => {
            let tmp = tempfile::tempdir().unwrap();
            let path = tmp.path().to_owned();
            (Some(tmp), path)
        }
    }
}

/// A user whose client does media: a tone (and a test pattern), every remote user recorded to
/// its own directory and mirrored into a channel.
struct MediaParty {
    party: Party,
    media: MediaEventStream,
    /// Media events read but not yet returned by `expect_media`.
    backlog: Vec<MediaEvent>,
    frames: Receivers,
    dir: PathBuf,
}

async fn media_party(
    server: &TestServer,
    name: &str,
    tone: f64,
    video: Option<VideoConfig>,
    root: &Path,
) -> MediaParty {
    media_party_at(server, &server.endpoint(), name, tone, video, root).await
}

/// As [`media_party`], connected through `endpoint` (a [`TcpProxy`] in front of the server).
async fn media_party_at(
    server: &TestServer,
    endpoint: &str,
    name: &str,
    tone: f64,
    video: Option<VideoConfig>,
    root: &Path,
) -> MediaParty {
    media_party_configured(server, endpoint, name, tone, video, root, |media| media).await
}

/// As [`media_party_at`], the media options passed through `configure` last.
async fn media_party_configured(
    server: &TestServer,
    endpoint: &str,
    name: &str,
    tone: f64,
    video: Option<VideoConfig>,
    root: &Path,
    configure: impl FnOnce(MediaOptions) -> MediaOptions,
) -> MediaParty {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let frames: Receivers = Arc::default();
    let mut media = MediaOptions::loopback().with_tone(tone);
    if let Some(config) = video {
        media = media.with_test_pattern(config);
    }
    let (sink_dir, sink_frames) = (dir.clone(), Arc::clone(&frames));
    let media = media.with_sinks(move |user, kind| {
        let (channel, rx) = ChannelSink::new();
        sink_frames.lock().unwrap().insert((user.to_string(), kind), rx);
        let file = record_sink(&sink_dir, user, kind).expect("the recording is created");
        Some(Box::new(TeeSink::new(vec![file, Box::new(channel)])) as Box<dyn MediaSink>)
    });
    let options =
        ClientOptions { reconnect_backoff_min: Duration::from_millis(20), ..ClientOptions::default() }
            .with_media(configure(media));
    let party =
        Party::connect_with(endpoint, &server.token(name), name, &format!("{name}-phone"), options).await;
    let media = party.client.media_events().expect("the client has media");
    assert!(party.client.media_events().is_none(), "media events are handed out once");
    MediaParty { party, media, backlog: Vec::new(), frames, dir }
}

impl MediaParty {
    /// The first media event not returned before that matches `pred`.
    async fn expect_media(&mut self, what: &str, pred: impl Fn(&MediaEvent) -> bool) -> MediaEvent {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i);
        }
        let name = self.party.name.clone();
        let deadline = Instant::now() + MEDIA_WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.media.next()).await {
                Ok(Some(event)) if pred(&event) => return event,
                Ok(Some(event)) => self.backlog.push(event),
                Ok(None) => panic!("{name}: media events ended waiting for {what}"),
                Err(_) => panic!("{name}: timed out waiting for {what}; media events: {:#?}", self.backlog),
            }
        }
    }

    /// The frames of `from`'s `kind` arriving here (the sink exists once media started).
    fn frames_from(&self, from: &str, kind: MediaKind) -> UnboundedReceiver<RemoteFrame> {
        self.frames
            .lock()
            .unwrap()
            .remove(&(from.to_owned(), kind))
            .unwrap_or_else(|| panic!("{}: no {kind:?} sink for {from}", self.party.name))
    }

    /// The frames of `from`'s `kind` once the client made a sink for them (after a join).
    async fn new_frames_from(&self, from: &str, kind: MediaKind) -> UnboundedReceiver<RemoteFrame> {
        let key = (from.to_owned(), kind);
        let deadline = Instant::now() + MEDIA_WAIT;
        loop {
            if let Some(rx) = self.frames.lock().unwrap().remove(&key) {
                return rx;
            }
            assert!(Instant::now() < deadline, "{}: no {kind:?} sink for {from}", self.party.name);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Where `from`'s media is recorded here.
    fn recording(&self, from: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{from}.{ext}"))
    }
}

fn first_frame(from: &str, kind: MediaKind) -> impl Fn(&MediaEvent) -> bool + '_ {
    move |e| matches!(e, MediaEvent::FirstFrame { user, kind: k, .. } if user.as_str() == from && *k == kind)
}

/// Milliseconds from `start_ms` (wall clock) to a `FirstFrame` event.
fn since(start_ms: i64, first: &MediaEvent) -> i64 {
    match first {
        MediaEvent::FirstFrame { at_ms, .. } => at_ms - start_ms,
        other => panic!("not a first frame: {other:?}"),
    }
}

fn is_stats(e: &MediaEvent) -> bool {
    matches!(e, MediaEvent::Stats(_))
}

/// Waits for `n` frames on a sink channel.
/// `caller` starts a MULTI call to `callees` and each of them answers once invited.
async fn group_call(
    caller: &MediaParty,
    callees: Vec<&mut MediaParty>,
    media: MediaType,
) -> callplus_session::CallId {
    let names: Vec<String> = callees.iter().map(|p| p.party.name.clone()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let started =
        caller.party.client.start_call(&names, CallType::Multi, media, Default::default()).await.unwrap();
    let call = started.call_id().clone();
    for callee in callees {
        callee.party.expect(received(&call), "the invitation").await;
        callee.party.client.accept(&call).await.unwrap();
    }
    call
}

async fn frames(rx: &mut UnboundedReceiver<RemoteFrame>, n: usize, what: &str) -> Vec<RemoteFrame> {
    timeout(MEDIA_WAIT, async {
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            got.push(rx.recv().await.unwrap_or_else(|| panic!("sink dropped while waiting for {what}")));
        }
        got
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {n} frames of {what}"))
}

/// Waits until the client dropped the sink (its channel closes): no frame can reach it any
/// more. Returns how many frames were still queued.
async fn sink_closed(rx: &mut UnboundedReceiver<RemoteFrame>, what: &str) -> usize {
    timeout(MEDIA_WAIT, async {
        let mut n = 0;
        while rx.recv().await.is_some() {
            n += 1;
        }
        n
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: the sink still receives after the call ended"))
}

/// `stopped` gets no more frames while `clock` goes on: after draining what was in flight
/// (`flush` frames of `clock` sent afterwards), `watch` more frames of `clock` arrive with none
/// of `stopped`.
async fn assert_stopped(
    clock: &mut UnboundedReceiver<RemoteFrame>,
    stopped: &mut UnboundedReceiver<RemoteFrame>,
    (flush, watch): (usize, usize),
    why: &str,
) {
    while clock.try_recv().is_ok() {}
    frames(clock, flush, "the running stream (flushing frames in flight)").await;
    while stopped.try_recv().is_ok() {}
    frames(clock, watch, "the running stream (watching the stopped one)").await;
    assert!(stopped.try_recv().is_err(), "a frame arrived after {why}");
}

/// Video sending stopped: half a second of audio flushes it, another second shows none.
async fn assert_no_more_video(
    audio: &mut UnboundedReceiver<RemoteFrame>,
    video: &mut UnboundedReceiver<RemoteFrame>,
    why: &str,
) {
    assert_stopped(audio, video, (25, 50), why).await;
}

/// Asserts that the recording holds at least a second of the `freq` tone.
fn assert_tone(path: &Path, freq: f64) {
    let pcm = decode_ogg_opus(path).expect("the recording decodes");
    assert!(pcm.len() >= 48_000, "{} holds only {} samples", path.display(), pcm.len());
    let found = dominant_frequency(&pcm[pcm.len() - 48_000..]);
    assert!((found - freq).abs() <= 10.0, "{}: dominant {found} Hz, sent {freq} Hz", path.display());
}

/// Asserts that the recording holds at least a second of audio whose last quarter second is the
/// `freq` tone (a quarter second still tells 5 Hz steps apart; for calls with many recordings,
/// which a debug build would take long to analyse over a whole second each).
fn assert_tone_quickly(path: &Path, freq: f64) {
    let pcm = decode_ogg_opus(path).expect("the recording decodes");
    assert!(pcm.len() >= 48_000, "{} holds only {} samples", path.display(), pcm.len());
    let found = dominant_frequency(&pcm[pcm.len() - 12_000..]);
    assert!((found - freq).abs() <= 10.0, "{}: dominant {found} Hz, sent {freq} Hz", path.display());
}

/// After the call's sinks were dropped: what was queued is discarded, then within 2.5 s at most
/// one status report (one in flight at the hangup) arrives for it — a running call would report
/// twice or more.
async fn assert_reports_stopped(p: &mut MediaParty, call: &callplus_session::CallId) {
    p.backlog.clear();
    while p.media.try_next().is_some() {}
    let mut reports = 0;
    let deadline = Instant::now() + Duration::from_millis(2500);
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, p.media.next()).await {
        if matches!(&event, MediaEvent::Stats(s) if s.call_id == *call) {
            reports += 1;
        }
    }
    assert!(reports <= 1, "{}: {reports} status reports after the call ended", p.party.name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_call_carries_the_tone_both_ways_and_hangup_stops_it() {
    let (_tmp, dir) = record_dir("audio");
    let server = TestServer::start(config()).await;
    let mut alice = media_party(&server, "alice", 440.0, None, &dir).await;
    let mut bob = media_party(&server, "bob", 660.0, None, &dir).await;

    let call = alice.party.call("bob", MediaType::Audio).await;
    bob.party.expect(received(&call), "the invitation").await;
    bob.party.client.ringing(&call).await.unwrap();
    let accepted = callplus_tests::now_ms();
    bob.party.client.accept(&call).await.unwrap();
    bob.party.expect(connected(&call), "connected").await;
    alice.party.expect(connected(&call), "connected").await;

    // No app code from here on: the clients negotiate and send by themselves.
    let first = alice.expect_media("bob's first audio frame", first_frame("bob", MediaKind::Audio)).await;
    let at_alice = since(accepted, &first);
    let first = bob.expect_media("alice's first audio frame", first_frame("alice", MediaKind::Audio)).await;
    let at_bob = since(accepted, &first);
    eprintln!("accept -> first remote audio frame: caller {at_alice} ms, callee {at_bob} ms");

    let mut bob_at_alice = alice.frames_from("bob", MediaKind::Audio);
    let mut alice_at_bob = bob.frames_from("alice", MediaKind::Audio);
    let got = frames(&mut bob_at_alice, 100, "bob's audio at alice").await;
    assert!(got.iter().all(|f| f.kind == MediaKind::Audio && !f.data.is_empty()));
    frames(&mut alice_at_bob, 100, "alice's audio at bob").await;
    // The local user's own audio is never played back: no sink was ever asked for it.
    assert!(alice.frames.lock().unwrap().keys().all(|(user, _)| user != "alice"));
    assert!(bob.frames.lock().unwrap().keys().all(|(user, _)| user != "bob"));

    // The first frame was reported to the server: the event, then the record carry it.
    for p in [&mut alice.party, &mut bob.party] {
        let event = p
            .expect(
                |e| matches!(e, Event::CallFirstFrameTime { call_id, .. } if *call_id == call),
                "first frame",
            )
            .await;
        let Event::CallFirstFrameTime { at_ms, .. } = event else { unreachable!() };
        assert!(at_ms >= callplus_tests::now_ms() - 60_000, "first frame at {at_ms}");
    }

    // Status reports about once a second, from the real stack (timed as they arrive).
    while let Some(event) = alice.media.try_next() {
        alice.backlog.push(event);
    }
    alice.backlog.retain(|e| !is_stats(e));
    // Four reports in a row: the content is checked, not the wall-clock gaps between them (a busy
    // machine can delay or bunch their delivery).
    let mut reports = Vec::new();
    while reports.len() < 4 {
        let event = alice.expect_media("a status report", is_stats).await;
        let MediaEvent::Stats(stats) = event else { unreachable!() };
        reports.push(stats);
    }
    eprintln!("alice's status reports: {reports:#?}");
    let last = &reports[reports.len() - 1];
    assert_eq!(last.call_id, call);
    assert_eq!(last.per_peer.len(), 1);
    assert_eq!(last.per_peer[0].user.as_str(), "bob");
    let bitrates: Vec<f64> = reports.iter().skip(1).map(|r| r.per_peer[0].bitrate_kbps).collect();
    assert!(bitrates.iter().all(|b| (10.0..500.0).contains(b)), "receive bitrates {bitrates:?}");
    assert!(bitrates.windows(2).any(|w| w[0] != w[1]), "constant bitrates {bitrates:?}");
    assert!(reports.iter().all(|r| (0.0..=100.0).contains(&r.per_peer[0].recv_loss_pct)));
    assert!(reports.iter().all(|r| (0.0..=100.0).contains(&r.send_loss_pct)));
    assert!(reports.iter().all(|r| r.rtt_ms.is_none_or(|rtt| (0.0..1000.0).contains(&rtt))));
    // Audio level of the half-scale tone: about 50.
    let level = alice
        .expect_media(
            "bob's audio level",
            |e| matches!(e, MediaEvent::AudioLevel { user, .. } if user.as_str() == "bob"),
        )
        .await;
    let MediaEvent::AudioLevel { level, .. } = level else { unreachable!() };
    assert!((35..=65).contains(&level), "bob's level at alice: {level}");

    // Hang up: both clients stop their media; the sinks are dropped, nothing more arrives.
    alice.party.client.hangup(Some(&call)).await.unwrap();
    alice.party.expect(ended(&call), "ended").await;
    bob.party.expect(ended(&call), "ended").await;
    let late_a = sink_closed(&mut bob_at_alice, "alice").await;
    let late_b = sink_closed(&mut alice_at_bob, "bob").await;
    eprintln!("frames still queued at the hangup: alice {late_a}, bob {late_b}");
    assert_reports_stopped(&mut alice, &call).await;
    assert_reports_stopped(&mut bob, &call).await;

    let record = alice.party.expect(record_of(&call), "the record").await;
    let Event::ReceivedCallRecord(record) = record else { unreachable!() };
    assert!(record.call.first_frame_at_ms.is_some(), "the record has no first-frame time: {record:?}");

    // The recordings decode, and each holds the other side's tone.
    assert_tone(&alice.recording("bob", "ogg"), 660.0);
    assert_tone(&bob.recording("alice", "ogg"), 440.0);
    assert!(!alice.recording("bob", "ivf").exists(), "an audio call records no video");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_call_carries_vp8_both_ways_camera_off_and_downgrade_stop_it() {
    let (_tmp, dir) = record_dir("video");
    let server = TestServer::start(config()).await;
    let alice_size = VideoConfig { width: 320, height: 240, fps: 15, ..VideoConfig::default() };
    let bob_size = VideoConfig { width: 160, height: 120, fps: 15, ..VideoConfig::default() };
    let mut alice = media_party(&server, "alice", 500.0, Some(alice_size), &dir).await;
    let mut bob = media_party(&server, "bob", 700.0, Some(bob_size), &dir).await;

    let call = alice.party.call("bob", MediaType::AudioVideo).await;
    bob.party.expect(received(&call), "the invitation").await;
    bob.party.client.ringing(&call).await.unwrap();
    let accepted = callplus_tests::now_ms();
    bob.party.client.accept(&call).await.unwrap();
    alice.party.expect(connected(&call), "connected").await;
    let first = alice.expect_media("bob's first video frame", first_frame("bob", MediaKind::Video)).await;
    let at_alice = since(accepted, &first);
    let first = bob.expect_media("alice's first video frame", first_frame("alice", MediaKind::Video)).await;
    let at_bob = since(accepted, &first);
    eprintln!("accept -> first remote video frame: caller {at_alice} ms, callee {at_bob} ms");

    let mut video_at_alice = alice.frames_from("bob", MediaKind::Video);
    let mut audio_at_alice = alice.frames_from("bob", MediaKind::Audio);
    let mut video_at_bob = bob.frames_from("alice", MediaKind::Video);
    let mut audio_at_bob = bob.frames_from("alice", MediaKind::Audio);
    let got_a = frames(&mut video_at_alice, 20, "video at alice").await;
    let got_b = frames(&mut video_at_bob, 20, "video at bob").await;
    assert!(got_a[0].keyframe && got_b[0].keyframe, "the first delivered frame is a key frame");

    // Camera off at alice: the track is muted and bob is told.
    alice.party.client.set_camera_enabled(false).await.unwrap();
    bob.party
        .expect(
            |e| {
                matches!(e, Event::RemoteCameraStateChanged { call_id, user_id, disabled: true }
                    if *call_id == call && user_id.as_str() == "alice")
            },
            "alice's camera off",
        )
        .await;
    assert_no_more_video(&mut audio_at_bob, &mut video_at_bob, "alice turned her camera off").await;
    frames(&mut video_at_alice, 5, "bob's video while his camera is on").await;

    // Camera on again: video flows again, starting with a key frame.
    alice.party.client.set_camera_enabled(true).await.unwrap();
    let again = frames(&mut video_at_bob, 3, "video after the camera is on again").await;
    assert!(again[0].keyframe);

    // Bob mutes all remote audio: alice's video goes on, her audio is no longer played (half a
    // second of video flushes, a second shows none); unmuted, it plays again.
    bob.party.client.mute_all_remote_audio(true).unwrap();
    assert_stopped(&mut video_at_bob, &mut audio_at_bob, (8, 15), "bob muted remote audio").await;
    bob.party.client.mute_all_remote_audio(false).unwrap();
    frames(&mut audio_at_bob, 10, "alice's audio after bob unmuted it").await;
    // set_video_view: from now on bob's video at alice goes to the sink alice gives; the sink
    // it replaces is told the stream ended.
    let (view, mut video_in_view) = ChannelSink::new();
    let bob_id = UserId::new("bob").unwrap();
    alice.party.client.set_video_view(&bob_id, Box::new(view), false).await.unwrap();
    sink_closed(&mut video_at_alice, "the sink the view replaced").await;
    frames(&mut video_in_view, 5, "bob's video in the view alice set").await;
    let mut video_at_alice = video_in_view;

    // A client without media has nothing to mute: the app plays remote audio itself.
    let carol = server.user("carol").await;
    let refused = carol.client.mute_all_remote_audio(true).expect_err("no media to mute");
    assert_eq!(refused.code, callplus_tests::Code::InvalidState);

    // Downgrade to AUDIO (needs no agreement): both stop sending video, audio goes on.
    alice.party.client.request_change_media_type(MediaType::Audio).await.unwrap();
    for p in [&mut alice.party, &mut bob.party] {
        p.expect(
            |e| {
                matches!(e, Event::ChangeMediaTypeResult { call_id, media_type: MediaType::Audio, result, .. }
                    if *call_id == call && *result == ChangeMediaTypeResult::Accepted)
            },
            "the downgrade",
        )
        .await;
    }
    assert_no_more_video(&mut audio_at_bob, &mut video_at_bob, "the call became AUDIO").await;
    assert_no_more_video(&mut audio_at_alice, &mut video_at_alice, "the call became AUDIO").await;

    bob.party.client.hangup(Some(&call)).await.unwrap();
    alice.party.expect(ended(&call), "ended").await;
    bob.party.expect(ended(&call), "ended").await;
    for (rx, what) in [
        (&mut video_at_alice, "video at alice"),
        (&mut audio_at_alice, "audio at alice"),
        (&mut video_at_bob, "video at bob"),
        (&mut audio_at_bob, "audio at bob"),
    ] {
        sink_closed(rx, what).await;
    }
    for (path, size) in
        [(alice.recording("bob", "ivf"), bob_size), (bob.recording("alice", "ivf"), alice_size)]
    {
        let IvfFile { fourcc, width: w, height: h, frame_count: count, frames } =
            read_ivf(&path).expect("the recording parses");
        assert_eq!(&fourcc, b"VP80");
        assert_eq!((u32::from(w), u32::from(h)), (size.width, size.height), "{}", path.display());
        assert_eq!(count as usize, frames.len());
        assert!(frames.len() >= 20, "{}: {} frames", path.display(), frames.len());
        assert_eq!(callplus_media::vp8::keyframe_dimensions(&frames[0]), Some((w, h)));
    }
    assert_tone(&alice.recording("bob", "ogg"), 700.0);
    assert_tone(&bob.recording("alice", "ogg"), 500.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_party_mesh_everyone_hears_everyone() {
    let (_tmp, dir) = record_dir("mesh");
    // A server keeping MULTI calls of up to three participants peer to peer.
    let server =
        TestServer::start_with(Setup { config: Some(config()), mesh_max: Some(3), ..Setup::default() }).await;
    let names = ["alice", "bob", "carol"];
    let tones = [300.0, 500.0, 700.0];
    let mut p = Vec::new();
    for (name, tone) in names.iter().zip(tones) {
        p.push(media_party(&server, name, tone, None, &dir).await);
    }
    let started = p[0]
        .party
        .client
        .start_call(&["bob", "carol"], CallType::Multi, MediaType::Audio, Default::default())
        .await
        .unwrap();
    let call = started.call_id().clone();

    // Bob answers first: alice and bob talk.
    p[1].party.expect(received(&call), "the invitation").await;
    p[1].party.client.accept(&call).await.unwrap();
    p[0].expect_media("bob's audio", first_frame("bob", MediaKind::Audio)).await;
    p[1].expect_media("alice's audio", first_frame("alice", MediaKind::Audio)).await;

    // Carol joins later: alice and bob add her to their mesh, she connects to both.
    p[2].party.expect(received(&call), "the invitation").await;
    p[2].party.client.accept(&call).await.unwrap();
    for (i, j) in [(0, 2), (1, 2), (2, 0), (2, 1)] {
        let what = format!("{}'s audio at {}", names[j], names[i]);
        p[i].expect_media(&what, first_frame(names[j], MediaKind::Audio)).await;
    }
    let mut rx: HashMap<(usize, usize), UnboundedReceiver<RemoteFrame>> = HashMap::new();
    for (i, party) in p.iter().enumerate() {
        for j in (0..3).filter(|&j| j != i) {
            rx.insert((i, j), party.frames_from(names[j], MediaKind::Audio));
        }
    }
    for ((i, j), frames_rx) in &mut rx {
        frames(frames_rx, 50, &format!("{}'s audio at {}", names[*j], names[*i])).await;
    }
    for party in &mut p {
        party
            .expect_media(
                "a report on both peers",
                |e| matches!(e, MediaEvent::Stats(s) if s.per_peer.len() == 2),
            )
            .await;
    }

    // Carol leaves: the others drop her and go on talking.
    p[2].party.client.hangup(Some(&call)).await.unwrap();
    for party in &mut p[..2] {
        party.party.expect(remote_state(&call, "carol", ParticipantState::Ended), "carol left").await;
    }
    for (i, j) in [(0, 2), (1, 2), (2, 0), (2, 1)] {
        sink_closed(rx.get_mut(&(i, j)).unwrap(), &format!("{}'s audio at {}", names[j], names[i])).await;
    }
    for (i, j) in [(0, 1), (1, 0)] {
        frames(rx.get_mut(&(i, j)).unwrap(), 25, "audio after carol left").await;
    }

    // Alice leaves: bob is alone and the call ends.
    p[0].party.client.hangup(Some(&call)).await.unwrap();
    p[1].party.expect(ended(&call), "ended").await;
    for (i, j) in [(0, 1), (1, 0)] {
        sink_closed(rx.get_mut(&(i, j)).unwrap(), "audio after the call ended").await;
    }
    for (i, j) in [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)] {
        assert_tone(&p[i].recording(names[j], "ogg"), tones[j]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_party_video_call_goes_through_the_servers_sfu() {
    let (_tmp, dir) = record_dir("sfu");
    let server = TestServer::start(config()).await;
    let names = ["alice", "bob", "carol"];
    let tones = [440.0, 660.0, 880.0];
    let sizes = [(320, 240), (160, 120), (240, 176)];
    let mut p = Vec::new();
    for ((name, tone), (width, height)) in names.iter().zip(tones).zip(sizes) {
        let video = VideoConfig { width, height, fps: 15, ..VideoConfig::default() };
        p.push(media_party(&server, name, tone, Some(video), &dir).await);
    }
    let started = p[0]
        .party
        .client
        .start_call(&["bob", "carol"], CallType::Multi, MediaType::AudioVideo, Default::default())
        .await
        .unwrap();
    let call = started.call_id().clone();
    let mut accepted = 0;
    for party in &mut p[1..] {
        party.party.expect(received(&call), "the invitation").await;
        accepted = callplus_tests::now_ms();
        party.party.client.accept(&call).await.unwrap();
    }

    // Everyone decodes everyone else's video and hears their tone.
    let pairs: Vec<(usize, usize)> =
        (0..3).flat_map(|i| (0..3).filter(move |&j| j != i).map(move |j| (i, j))).collect();
    let mut slowest = 0;
    for &(i, j) in &pairs {
        let what = format!("{}'s video at {}", names[j], names[i]);
        let first = p[i].expect_media(&what, first_frame(names[j], MediaKind::Video)).await;
        slowest = slowest.max(since(accepted, &first));
    }
    eprintln!("last accept -> everyone decodes everyone's video through the sfu: {slowest} ms");
    let mut rx: HashMap<(usize, usize, MediaKind), UnboundedReceiver<RemoteFrame>> = HashMap::new();
    for &(i, j) in &pairs {
        for kind in [MediaKind::Audio, MediaKind::Video] {
            rx.insert((i, j, kind), p[i].frames_from(names[j], kind));
        }
    }
    for &(i, j) in &pairs {
        let video = rx.get_mut(&(i, j, MediaKind::Video)).unwrap();
        frames(video, 15, &format!("{}'s video at {}", names[j], names[i])).await;
        let audio = rx.get_mut(&(i, j, MediaKind::Audio)).unwrap();
        frames(audio, 60, &format!("{}'s audio at {}", names[j], names[i])).await;
    }

    // One peer connection per client, and it is the server's SFU's.
    for party in &mut p {
        let report = party.expect_media("a status report", is_stats).await;
        let MediaEvent::Stats(stats) = report else { unreachable!() };
        let peers: Vec<(String, String)> =
            stats.per_peer.iter().map(|s| (s.user.to_string(), s.device.to_string())).collect();
        assert_eq!(
            peers,
            vec![(
                callplus_signal::server::SFU_USER.to_owned(),
                callplus_signal::server::SFU_DEVICE.to_owned()
            )],
            "{}: its connections",
            party.party.name
        );
    }

    // The SFU's audio levels and active speaker reach every client (half-scale tones all: someone
    // of the call speaks, everyone's level about 50).
    for party in &mut p {
        let speaker = party
            .expect_media("the active speaker", |e| {
                matches!(e, MediaEvent::ActiveSpeaker { user: Some(user), .. } if names.contains(&user.as_str()))
            })
            .await;
        eprintln!("{}: {speaker:?}", party.party.name);
        let me = party.party.name.clone();
        for other in names.iter().filter(|n| **n != me.as_str()) {
            let level = party
                .expect_media(
                    "a level",
                    |e| matches!(e, MediaEvent::AudioLevel { user, .. } if user.as_str() == *other),
                )
                .await;
            let MediaEvent::AudioLevel { level, .. } = level else { unreachable!() };
            assert!((35..=65).contains(&level), "{other}'s level at {me}: {level}");
        }
    }

    // Carol leaves: the SFU drops her streams at alice and bob, who go on receiving each other.
    p[2].party.client.hangup(Some(&call)).await.unwrap();
    for (i, j) in [(0, 2), (1, 2)] {
        for kind in [MediaKind::Audio, MediaKind::Video] {
            let what = format!("{}'s {kind:?} at {} after she left", names[j], names[i]);
            sink_closed(rx.get_mut(&(i, j, kind)).unwrap(), &what).await;
        }
    }
    for (i, j) in [(0, 1), (1, 0)] {
        frames(rx.get_mut(&(i, j, MediaKind::Audio)).unwrap(), 25, "audio after carol left").await;
    }
    p[0].party.client.hangup(Some(&call)).await.unwrap();
    p[1].party.expect(ended(&call), "ended").await;
    // Every recording is complete once its sink is dropped.
    for (i, j) in [(0, 1), (1, 0), (2, 0), (2, 1)] {
        for kind in [MediaKind::Audio, MediaKind::Video] {
            let what = format!("{}'s {kind:?} at {} after the call", names[j], names[i]);
            sink_closed(rx.get_mut(&(i, j, kind)).unwrap(), &what).await;
        }
    }

    for (i, j) in pairs {
        assert_tone(&p[i].recording(names[j], "ogg"), tones[j]);
        let path = p[i].recording(names[j], "ivf");
        let IvfFile { width, height, frames, .. } = read_ivf(&path).expect("the recording parses");
        assert_eq!((u32::from(width), u32::from(height)), sizes[j], "{}", path.display());
        assert!(frames.len() >= 15, "{}: {} frames", path.display(), frames.len());
    }
}

/// Whether a status report shows exactly one connection, the server's SFU's.
fn only_the_sfu(e: &MediaEvent) -> bool {
    matches!(e, MediaEvent::Stats(s) if s.per_peer.len() == 1
        && s.per_peer[0].user.as_str() == callplus_signal::server::SFU_USER
        && s.per_peer[0].device.as_str() == callplus_signal::server::SFU_DEVICE)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_into_a_one_to_one_video_call_moves_its_media_to_the_sfu() {
    let (_tmp, dir) = record_dir("sfu-switch");
    let server = TestServer::start(config()).await;
    let names = ["alice", "bob", "carol"];
    let tones = [440.0, 660.0, 880.0];
    let sizes = [(320, 240), (160, 120), (240, 176)];
    let mut p = Vec::new();
    for ((name, tone), (width, height)) in names.iter().zip(tones).zip(sizes) {
        let video = VideoConfig { width, height, fps: 15, ..VideoConfig::default() };
        p.push(media_party(&server, name, tone, Some(video), &dir).await);
    }

    // A one-to-one call: peer to peer.
    let call = p[0].party.call("bob", MediaType::AudioVideo).await;
    p[1].party.expect(received(&call), "the invitation").await;
    p[1].party.client.accept(&call).await.unwrap();
    p[0].expect_media("bob's video", first_frame("bob", MediaKind::Video)).await;
    p[1].expect_media("alice's video", first_frame("alice", MediaKind::Video)).await;
    p[0].expect_media(
        "a report on the connection to bob",
        |e| matches!(e, MediaEvent::Stats(s) if s.per_peer.len() == 1 && s.per_peer[0].user.as_str() == "bob"),
    )
    .await;
    for party in &mut p {
        party.backlog.clear();
        while party.media.try_next().is_some() {}
    }

    // Alice invites carol: the call becomes a group, alice's and bob's media moves to the SFU,
    // and carol joins them there.
    let invited = callplus_tests::now_ms();
    p[0].party.client.invite(&["carol"]).await.unwrap();
    let again = p[0].expect_media("bob's video again", first_frame("bob", MediaKind::Video)).await;
    eprintln!("invite -> alice decodes bob's video again, through the sfu: {} ms", since(invited, &again));
    p[0].backlog.push(again);
    p[2].party.expect(received(&call), "the invitation").await;
    p[2].party.client.accept(&call).await.unwrap();
    let pairs: Vec<(usize, usize)> =
        (0..3).flat_map(|i| (0..3).filter(move |&j| j != i).map(move |j| (i, j))).collect();
    for &(i, j) in &pairs {
        let what = format!("{}'s video at {} through the sfu", names[j], names[i]);
        p[i].expect_media(&what, first_frame(names[j], MediaKind::Video)).await;
    }
    let mut rx: HashMap<(usize, usize, MediaKind), UnboundedReceiver<RemoteFrame>> = HashMap::new();
    for &(i, j) in &pairs {
        for kind in [MediaKind::Audio, MediaKind::Video] {
            rx.insert((i, j, kind), p[i].frames_from(names[j], kind));
        }
    }
    for &(i, j) in &pairs {
        frames(rx.get_mut(&(i, j, MediaKind::Video)).unwrap(), 15, "video through the sfu").await;
        frames(rx.get_mut(&(i, j, MediaKind::Audio)).unwrap(), 60, "audio through the sfu").await;
    }
    for party in &mut p {
        party.expect_media("a report on the sfu connection alone", only_the_sfu).await;
    }
    for party in &p[..2] {
        assert!(party.party.client.current_call().is_some(), "{}: the call went on", party.party.name);
    }

    for party in &p {
        party.party.client.hangup(Some(&call)).await.unwrap_or_default();
    }
    for (key, sink) in &mut rx {
        sink_closed(sink, &format!("{key:?} after the call")).await;
    }
    for (i, j) in pairs {
        assert_tone(&p[i].recording(names[j], "ogg"), tones[j]);
        let path = p[i].recording(names[j], "ivf");
        let IvfFile { width, height, frames, .. } = read_ivf(&path).expect("the recording parses");
        assert_eq!((u32::from(width), u32::from(height)), sizes[j], "{}", path.display());
        assert!(frames.len() >= 15, "{}: {} frames", path.display(), frames.len());
    }
}

/// Whether a status report shows exactly one connection, to `user`.
fn only_peer(user: &'static str) -> impl Fn(&MediaEvent) -> bool {
    move |e| matches!(e, MediaEvent::Stats(s) if s.per_peer.len() == 1 && s.per_peer[0].user.as_str() == user)
}

/// Drops the backlog and every media event queued so far.
fn forget_media_events(party: &mut MediaParty) {
    party.backlog.clear();
    while party.media.try_next().is_some() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_call_growing_past_mesh_max_moves_to_the_sfu_and_everyone_keeps_media() {
    let (_tmp, dir) = record_dir("mesh-grows");
    // MULTI calls of up to two participants stay peer to peer.
    let server =
        TestServer::start_with(Setup { config: Some(config()), mesh_max: Some(2), ..Setup::default() }).await;
    let names = ["alice", "bob", "carol"];
    let tones = [440.0, 660.0, 880.0];
    let mut p = Vec::new();
    for (name, tone) in names.iter().zip(tones) {
        p.push(media_party(&server, name, tone, None, &dir).await);
    }
    let started = p[0]
        .party
        .client
        .start_call(&["bob"], CallType::Multi, MediaType::Audio, Default::default())
        .await
        .unwrap();
    let call = started.call_id().clone();
    p[1].party.expect(received(&call), "the invitation").await;
    p[1].party.client.accept(&call).await.unwrap();
    p[0].expect_media("bob's audio", first_frame("bob", MediaKind::Audio)).await;
    p[1].expect_media("alice's audio", first_frame("alice", MediaKind::Audio)).await;
    p[0].expect_media("a report on the mesh connection to bob", only_peer("bob")).await;
    for party in &mut p {
        forget_media_events(party);
    }

    // Carol makes three: alice's and bob's media move to the SFU, without ending the call.
    let invited = callplus_tests::now_ms();
    p[0].party.client.invite(&["carol"]).await.unwrap();
    let again = p[0].expect_media("bob's audio again", first_frame("bob", MediaKind::Audio)).await;
    eprintln!("invite -> alice hears bob again, through the sfu: {} ms", since(invited, &again));
    p[0].backlog.push(again);
    p[2].party.expect(received(&call), "the invitation").await;
    p[2].party.client.accept(&call).await.unwrap();
    let pairs: Vec<(usize, usize)> =
        (0..3).flat_map(|i| (0..3).filter(move |&j| j != i).map(move |j| (i, j))).collect();
    for &(i, j) in &pairs {
        let what = format!("{}'s audio at {} through the sfu", names[j], names[i]);
        p[i].expect_media(&what, first_frame(names[j], MediaKind::Audio)).await;
    }
    let mut rx: HashMap<(usize, usize), UnboundedReceiver<RemoteFrame>> = HashMap::new();
    for &(i, j) in &pairs {
        rx.insert((i, j), p[i].frames_from(names[j], MediaKind::Audio));
    }
    for (&(i, j), sink) in &mut rx {
        frames(sink, 60, &format!("{}'s audio at {} through the sfu", names[j], names[i])).await;
    }
    for party in &mut p {
        party.expect_media("a report on the sfu connection alone", only_the_sfu).await;
    }
    for party in &mut p[..2] {
        party.party.sync().await;
        assert!(party.party.client.current_call().is_some(), "{}: the call went on", party.party.name);
        assert_eq!(party.party.seen(ended(&call)), 0, "{}: the call never ended", party.party.name);
    }

    for party in &p {
        party.party.client.hangup(Some(&call)).await.unwrap_or_default();
    }
    for (key, sink) in &mut rx {
        sink_closed(sink, &format!("{key:?} after the call")).await;
    }
    for (i, j) in pairs {
        assert_tone(&p[i].recording(names[j], "ogg"), tones[j]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_sfu_connection_is_cut_reconnects_without_leaving_the_call() {
    let (_tmp, dir) = record_dir("sfu-recovery");
    let server = TestServer::start(config()).await;
    let names = ["alice", "bob", "carol"];
    let tones = [440.0, 660.0, 880.0];
    let mut p = Vec::new();
    for (name, tone) in names.iter().zip(tones) {
        p.push(media_party(&server, name, tone, None, &dir).await);
    }
    let call = {
        let (caller, callees) = p.split_first_mut().expect("three parties");
        group_call(caller, callees.iter_mut().collect(), MediaType::Audio).await
    };
    let pairs: Vec<(usize, usize)> =
        (0..3).flat_map(|i| (0..3).filter(move |&j| j != i).map(move |j| (i, j))).collect();
    for &(i, j) in &pairs {
        let what = format!("{}'s audio at {}", names[j], names[i]);
        p[i].expect_media(&what, first_frame(names[j], MediaKind::Audio)).await;
    }
    let mut rx: HashMap<(usize, usize), UnboundedReceiver<RemoteFrame>> = HashMap::new();
    for &(i, j) in &pairs {
        rx.insert((i, j), p[i].frames_from(names[j], MediaKind::Audio));
    }
    for (&(i, j), sink) in &mut rx {
        frames(sink, 25, &format!("{}'s audio at {}", names[j], names[i])).await;
    }
    for party in &mut p {
        forget_media_events(party);
    }

    // Bob's connection to the SFU goes away under his client (closed by his media stack alone:
    // his engine and the server are not told).
    let cut = callplus_tests::now_ms();
    let adapter = p[1].party.client.media_adapter().expect("bob has media");
    adapter.stop(&call).await.unwrap();
    // His old sinks end with it; alice and carol go on hearing each other meanwhile.
    for j in [0, 2] {
        sink_closed(rx.get_mut(&(1, j)).unwrap(), "bob's sinks of the cut connection").await;
    }
    frames(rx.get_mut(&(0, 2)).unwrap(), 25, "carol's audio at alice while bob is cut off").await;

    // The SFU notices, the server sends bob a fresh route, and his media comes back: he hears
    // both again and both hear him, on one connection, the SFU's.
    for j in [0, 2] {
        let what = format!("{}'s audio at bob again", names[j]);
        let first = p[1].expect_media(&what, first_frame(names[j], MediaKind::Audio)).await;
        eprintln!("cut -> bob hears {} again: {} ms", names[j], since(cut, &first));
        rx.insert((1, j), p[1].frames_from(names[j], MediaKind::Audio));
    }
    for i in [0, 2] {
        let sink = rx.get_mut(&(i, 1)).unwrap();
        while sink.try_recv().is_ok() {}
        frames(sink, 50, &format!("bob's audio at {} after his reconnection", names[i])).await;
    }
    for j in [0, 2] {
        frames(rx.get_mut(&(1, j)).unwrap(), 50, "audio at bob after his reconnection").await;
    }
    p[1].expect_media("bob's report on the sfu connection alone", only_the_sfu).await;
    for party in &mut p {
        party.party.sync().await;
        assert!(party.party.client.current_call().is_some(), "{}: still in the call", party.party.name);
        assert_eq!(party.party.seen(ended(&call)), 0, "{}: the call never ended", party.party.name);
    }
    for party in [&p[0], &p[2]] {
        let bob_left = party.party.seen(remote_state(&call, "bob", ParticipantState::Ended));
        assert_eq!(bob_left, 0, "{}: bob never left", party.party.name);
    }

    for party in &p {
        party.party.client.hangup(Some(&call)).await.unwrap_or_default();
    }
    for (key, sink) in &mut rx {
        sink_closed(sink, &format!("{key:?} after the call")).await;
    }
    for (i, j) in pairs {
        assert_tone(&p[i].recording(names[j], "ogg"), tones[j]);
    }
}

/// A participant whose SFU connection is cut and who never connects again leaves the call with
/// NETWORK_ERROR at the server's media recovery bound (`media_recovery_ms`, `--media-recovery`),
/// here 2 s. His signalling is black-holed at the same moment (the fresh route cannot reach
/// him), and the liveness timeout is a minute, so only the media bound can remove him in time.
/// The SFU notices the closed connection when its ICE consent runs out (about 7 s here), so the
/// removal comes about 9 s after the cut; at the default 20 s bound, not before 27 s, and the
/// 18 s wait for it runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_whose_sfu_connection_never_comes_back_leaves_at_the_recovery_bound() {
    let (_tmp, dir) = record_dir("sfu-removal");
    let bound_ms = 2_000;
    let cfg = SwitchboardConfig {
        media_recovery_ms: bound_ms,
        liveness_timeout_ms: 60_000,
        resume_window_ms: 60_000,
        ..config()
    };
    let server = TestServer::start(cfg).await;
    let proxy = TcpProxy::start(server.addr()).await;
    let mut alice = media_party(&server, "alice", 440.0, None, &dir).await;
    let mut bob = media_party_at(&server, &proxy.endpoint(), "bob", 660.0, None, &dir).await;
    let mut carol = media_party(&server, "carol", 880.0, None, &dir).await;
    let call = group_call(&alice, vec![&mut bob, &mut carol], MediaType::Audio).await;
    for from in ["bob", "carol"] {
        alice.expect_media(&format!("{from}'s audio at alice"), first_frame(from, MediaKind::Audio)).await;
    }
    for party in [&mut bob, &mut carol] {
        party.expect_media("alice's audio", first_frame("alice", MediaKind::Audio)).await;
    }
    let mut carol_at_alice = alice.frames_from("carol", MediaKind::Audio);
    frames(&mut carol_at_alice, 25, "carol's audio at alice").await;

    // Bob's network to the server goes dead (nobody closes it) and his SFU connection closes.
    proxy.freeze();
    proxy.pause();
    let cut = callplus_tests::now_ms();
    bob.party.client.media_adapter().expect("bob has media").stop(&call).await.unwrap();

    let bob_left = |e: &Event| {
        matches!(e, Event::RemoteUserStateChanged { call_id, user_id, state: ParticipantState::Ended, reason: Some(EndReason::NetworkError) }
            if call_id == &call && user_id.as_str() == "bob")
    };
    for party in [&mut alice, &mut carol] {
        party.party.expect_within(Duration::from_secs(18), bob_left, "bob leaves with NETWORK_ERROR").await;
    }
    let after = callplus_tests::now_ms() - cut;
    eprintln!("cut -> bob removed: {after} ms (bound {bound_ms} ms)");
    assert!(after >= i64::from(bound_ms), "removed before the bound: {after} ms");
    // Alice and carol's call goes on, with media.
    while carol_at_alice.try_recv().is_ok() {}
    frames(&mut carol_at_alice, 25, "carol's audio at alice after bob left").await;
    for party in [&mut alice, &mut carol] {
        party.party.sync().await;
        assert_eq!(party.party.seen(ended(&call)), 0, "{}: the call goes on", party.party.name);
    }
    for party in [&alice, &carol] {
        party.party.client.hangup(Some(&call)).await.unwrap_or_default();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_off_pauses_forwarding_at_the_sfu_even_if_the_sender_goes_on() {
    let (_tmp, dir) = record_dir("sfu-pause");
    let server = TestServer::start(config()).await;
    let video = VideoConfig { width: 160, height: 120, fps: 15, ..VideoConfig::default() };
    let alice = media_party(&server, "alice", 440.0, Some(video), &dir).await;
    let mut bob = media_party(&server, "bob", 660.0, Some(video), &dir).await;
    // A MULTI call of two: through the SFU (the server's default mesh size is 0).
    let started = alice
        .party
        .client
        .start_call(&["bob"], CallType::Multi, MediaType::AudioVideo, Default::default())
        .await
        .unwrap();
    let call = started.call_id().clone();
    bob.party.expect(received(&call), "the invitation").await;
    bob.party.client.accept(&call).await.unwrap();
    bob.expect_media("alice's video", first_frame("alice", MediaKind::Video)).await;
    bob.expect_media("a report on the sfu connection", only_the_sfu).await;
    let mut video_at_bob = bob.frames_from("alice", MediaKind::Video);
    let mut audio_at_bob = bob.frames_from("alice", MediaKind::Audio);
    frames(&mut video_at_bob, 10, "alice's video at bob").await;

    // Alice turns her camera off: bob is told, and no video of hers reaches him.
    alice.party.client.set_camera_enabled(false).await.unwrap();
    bob.party
        .expect(
            |e| {
                matches!(e, Event::RemoteCameraStateChanged { call_id, user_id, disabled: true }
                    if *call_id == call && user_id.as_str() == "alice")
            },
            "alice's camera off",
        )
        .await;
    assert_no_more_video(&mut audio_at_bob, &mut video_at_bob, "alice turned her camera off").await;

    // Her media stack sends video again without telling the server (a client that does not
    // stop its sender): the SFU forwards none of it while the call says her camera is off.
    let adapter = alice.party.client.media_adapter().expect("alice has media");
    adapter.set_camera_enabled(true).await.unwrap();
    assert_no_more_video(&mut audio_at_bob, &mut video_at_bob, "the sfu paused alice's video").await;

    // Camera on through the call: forwarding resumes, bob decodes from a key frame.
    alice.party.client.set_camera_enabled(true).await.unwrap();
    bob.party
        .expect(
            |e| {
                matches!(e, Event::RemoteCameraStateChanged { call_id, user_id, disabled: false }
                    if *call_id == call && user_id.as_str() == "alice")
            },
            "alice's camera on",
        )
        .await;
    let again = frames(&mut video_at_bob, 5, "alice's video after her camera is on again").await;
    assert!(again[0].keyframe, "forwarding resumes with a key frame");

    alice.party.client.hangup(Some(&call)).await.unwrap();
    bob.party.expect(ended(&call), "ended").await;
}

/// The size of the next key frame on `rx`.
async fn next_key_frame_size(rx: &mut UnboundedReceiver<RemoteFrame>, what: &str) -> (u16, u16) {
    timeout(MEDIA_WAIT, async {
        loop {
            let frame = rx.recv().await.unwrap_or_else(|| panic!("sink dropped while waiting for {what}"));
            if frame.keyframe {
                return callplus_media::vp8::keyframe_dimensions(&frame.data)
                    .expect("a key frame has a size");
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for a key frame of {what}"))
}

/// Waits for a key frame of `size` on `rx` after a layer switch was asked for; until the switch,
/// the old layer goes on, and so may its key frames (its encoder's periodic ones, or one another
/// viewer asked for): they must all be of `old` size.
async fn switched_to(rx: &mut UnboundedReceiver<RemoteFrame>, size: (u16, u16), old: (u16, u16), what: &str) {
    let switched = timeout(MEDIA_WAIT, async {
        loop {
            let got = next_key_frame_size(rx, what).await;
            if got == size {
                return;
            }
            assert_eq!(got, old, "{what}: a key frame of neither layer");
        }
    });
    switched.await.unwrap_or_else(|_| panic!("{what}: only key frames of the old layer"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_layer_selection_changes_the_received_resolution() {
    let (_tmp, dir) = record_dir("sfu-tiny");
    let server = TestServer::start(config()).await;
    let names = ["alice", "bob", "carol"];
    let mut p = Vec::new();
    for (name, tone) in names.iter().zip([440.0, 660.0, 880.0]) {
        let video = VideoConfig { width: 320, height: 240, fps: 15, ..VideoConfig::default() };
        p.push(media_party(&server, name, tone, Some(video), &dir).await);
    }
    let call = {
        let (caller, callees) = p.split_first_mut().expect("three parties");
        group_call(caller, callees.iter_mut().collect(), MediaType::AudioVideo).await
    };
    for i in [1, 2] {
        p[i].expect_media("alice's video", first_frame("alice", MediaKind::Video)).await;
    }
    let mut at_bob = p[1].frames_from("alice", MediaKind::Video);
    let mut at_carol = p[2].frames_from("alice", MediaKind::Video);
    assert_eq!(next_key_frame_size(&mut at_bob, "alice's video at bob").await, (320, 240));
    assert_eq!(next_key_frame_size(&mut at_carol, "alice's video at carol").await, (320, 240));

    // Bob shows alice in a small view: her tiny layer reaches him, carol keeps the full one.
    let alice = UserId::new("alice").unwrap();
    let asked = Instant::now();
    p[1].party.client.set_video_tiny(&alice, true).await.unwrap();
    switched_to(&mut at_bob, (160, 120), (320, 240), "alice's tiny layer at bob").await;
    eprintln!("bob: tiny view -> alice's tiny layer: {:?}", asked.elapsed());
    for frame in frames(&mut at_bob, 15, "alice's tiny layer at bob").await {
        if frame.keyframe {
            assert_eq!(callplus_media::vp8::keyframe_dimensions(&frame.data), Some((160, 120)));
        }
    }
    for frame in frames(&mut at_carol, 15, "alice's video at carol").await {
        if frame.keyframe {
            assert_eq!(callplus_media::vp8::keyframe_dimensions(&frame.data), Some((320, 240)), "carol");
        }
    }

    // Back to a large view: the full size returns.
    p[1].party.client.set_video_tiny(&alice, false).await.unwrap();
    switched_to(&mut at_bob, (320, 240), (160, 120), "alice's full layer at bob").await;
    frames(&mut at_bob, 15, "alice's full layer at bob").await;

    p[0].party.client.hangup(Some(&call)).await.unwrap();
    for party in &mut p[1..] {
        party.party.client.hangup(Some(&call)).await.ok();
    }
}

/// Six parties of an AUDIO_VIDEO group call: name, tone, picture size (all different, and small
/// so that six encoders and thirty receive paths stay cheap in a debug build).
const SIX: [(&str, f64, (u32, u32)); 6] = [
    ("ann", 440.0, (160, 120)),
    ("ben", 550.0, (128, 96)),
    ("cat", 660.0, (176, 144)),
    ("dan", 770.0, (144, 112)),
    ("eve", 880.0, (112, 80)),
    ("fay", 990.0, (96, 72)),
];

/// Every (receiver, sender) pair of `n` parties.
fn all_pairs(n: usize) -> Vec<(usize, usize)> {
    (0..n).flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_party_video_call_through_the_sfu_survives_a_leave_and_a_rejoin() {
    let (_tmp, dir) = record_dir("sfu-six");
    let server = TestServer::start(config()).await;
    let names: Vec<&str> = SIX.iter().map(|s| s.0).collect();
    let mut p = Vec::new();
    for (name, tone, (width, height)) in SIX {
        let video = VideoConfig { width, height, fps: 15, ..VideoConfig::default() };
        p.push(media_party(&server, name, tone, Some(video), &dir).await);
    }
    let started = p[0]
        .party
        .client
        .start_call(&names[1..], CallType::Multi, MediaType::AudioVideo, Default::default())
        .await
        .unwrap();
    let call = started.call_id().clone();
    let began = callplus_tests::now_ms();
    for party in &mut p[1..] {
        party.party.expect(received(&call), "the invitation").await;
        party.party.client.accept(&call).await.unwrap();
    }

    // Everyone decodes everyone else's video and hears their audio, over one connection each:
    // the server's SFU.
    let pairs = all_pairs(6);
    for &(i, j) in &pairs {
        for kind in [MediaKind::Video, MediaKind::Audio] {
            let what = format!("{}'s first {kind:?} frame at {}", names[j], names[i]);
            p[i].expect_media(&what, first_frame(names[j], kind)).await;
        }
    }
    eprintln!("six parties: start -> everyone decodes everyone: {} ms", callplus_tests::now_ms() - began);
    let mut rx: HashMap<(usize, usize, MediaKind), UnboundedReceiver<RemoteFrame>> = HashMap::new();
    for &(i, j) in &pairs {
        for kind in [MediaKind::Audio, MediaKind::Video] {
            rx.insert((i, j, kind), p[i].frames_from(names[j], kind));
        }
    }
    for &(i, j) in &pairs {
        frames(rx.get_mut(&(i, j, MediaKind::Video)).unwrap(), 10, "video through the sfu").await;
        frames(rx.get_mut(&(i, j, MediaKind::Audio)).unwrap(), 25, "audio through the sfu").await;
    }
    for party in &mut p {
        party.expect_media("a report on the sfu connection alone", only_the_sfu).await;
    }

    // Fay leaves: her streams stop everywhere, the five others keep receiving each other.
    p[5].party.client.hangup(Some(&call)).await.unwrap();
    for party in &mut p[..5] {
        party.party.expect(remote_state(&call, "fay", ParticipantState::Ended), "fay left").await;
    }
    for &(i, j) in pairs.iter().filter(|(i, j)| *i == 5 || *j == 5) {
        for kind in [MediaKind::Audio, MediaKind::Video] {
            let what = format!("{}'s {kind:?} at {} after fay left", names[j], names[i]);
            sink_closed(rx.get_mut(&(i, j, kind)).unwrap(), &what).await;
        }
    }
    for &(i, j) in pairs.iter().filter(|(i, j)| *i != 5 && *j != 5) {
        frames(rx.get_mut(&(i, j, MediaKind::Video)).unwrap(), 5, "video while fay is away").await;
        frames(rx.get_mut(&(i, j, MediaKind::Audio)).unwrap(), 25, "audio while fay is away").await;
    }
    assert!(p[0].party.client.current_call().is_some(), "the call went on without fay");

    // Fay joins again: the SFU forwards her streams to the others and theirs to her.
    for party in &mut p {
        party.backlog.clear();
        while party.media.try_next().is_some() {}
    }
    p[5].party.client.join_call(&call).await.unwrap();
    // Fay's connection is new: she reports a first frame of everyone. The others' connections
    // to the SFU stay up (a first frame is reported once per connection and user): their new
    // sinks for fay receive her media.
    for name in &names[..5] {
        for kind in [MediaKind::Video, MediaKind::Audio] {
            let what = format!("{name}'s {kind:?} at fay after she rejoined");
            p[5].expect_media(&what, first_frame(name, kind)).await;
        }
    }
    for &(i, j) in pairs.iter().filter(|(i, j)| *i == 5 || *j == 5) {
        for kind in [MediaKind::Audio, MediaKind::Video] {
            rx.insert((i, j, kind), p[i].new_frames_from(names[j], kind).await);
        }
    }
    // Enough of everything for the recordings (fay's, and fay's at the others, were started
    // anew): a second of audio and some video from everyone at everyone, fay's video at the
    // others included (her new video sections on their connections carry new track ids).
    for &(i, j) in &pairs {
        for (kind, n) in [(MediaKind::Audio, 60), (MediaKind::Video, 10)] {
            let what = format!("{}'s {kind:?} at {} after fay rejoined", names[j], names[i]);
            frames(rx.get_mut(&(i, j, kind)).unwrap(), n, &what).await;
        }
    }
    p[5].expect_media("fay: a report on the sfu connection alone", only_the_sfu).await;

    for party in &p {
        party.party.client.hangup(Some(&call)).await.unwrap_or_default();
    }
    for (key, sink) in &mut rx {
        sink_closed(sink, &format!("{key:?} after the call")).await;
    }
    for (i, j) in pairs {
        let (_, tone, size) = SIX[j];
        assert_tone_quickly(&p[i].recording(names[j], "ogg"), tone);
        let path = p[i].recording(names[j], "ivf");
        let IvfFile { fourcc, width, height, frames, .. } = read_ivf(&path).expect("the recording parses");
        assert_eq!(&fourcc, b"VP80");
        assert_eq!((u32::from(width), u32::from(height)), size, "{}", path.display());
        assert!(frames.len() >= 10, "{}: {} frames", path.display(), frames.len());
        let first =
            callplus_media::vp8::keyframe_dimensions(&frames[0]).map(|(w, h)| (u32::from(w), u32::from(h)));
        assert_eq!(first, Some(size), "{}: the first frame is a key frame of the right size", path.display());
    }
}

/// Video packets the relay between bob and the SFU drops (their first transmission), counted in
/// sequence numbers from the first packet of the stream it saw once armed.
const DROP_OFFSETS: [u16; 3] = [4, 10, 17];

/// Sums over status reports of what the peers (here: the SFU alone) did to video.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct VideoRepairs {
    /// Packets put back in place (NACK retransmissions, or reordering).
    recovered: u32,
    /// Gaps given up.
    lost: u32,
    /// Key-frame requests sent.
    plis_sent: u32,
    /// Key-frame requests received about our own video.
    plis_received: u32,
}

impl VideoRepairs {
    fn of(event: &MediaEvent) -> VideoRepairs {
        let MediaEvent::Stats(stats) = event else { return VideoRepairs::default() };
        stats.per_peer.iter().fold(VideoRepairs::default(), |sum, peer| VideoRepairs {
            recovered: sum.recovered + peer.video_packets_recovered,
            lost: sum.lost + peer.video_packets_lost,
            plis_sent: sum.plis_sent + peer.keyframe_requests_sent,
            plis_received: sum.plis_received + peer.keyframe_requests_received,
        })
    }

    fn add(self, other: VideoRepairs) -> VideoRepairs {
        VideoRepairs {
            recovered: self.recovered + other.recovered,
            lost: self.lost + other.lost,
            plis_sent: self.plis_sent + other.plis_sent,
            plis_received: self.plis_received + other.plis_received,
        }
    }
}

impl MediaParty {
    /// What the next status report says.
    async fn next_repairs(&mut self) -> VideoRepairs {
        VideoRepairs::of(&self.expect_media("a status report", is_stats).await)
    }

    /// Waits for a status report whose interval saw nothing to repair and no key-frame request
    /// either way (a call's opening key frames are behind).
    async fn quiet_report(&mut self) {
        let name = self.party.name.clone();
        let quiet =
            timeout(MEDIA_WAIT, async { while self.next_repairs().await != VideoRepairs::default() {} })
                .await;
        quiet.unwrap_or_else(|_| panic!("{name}: no quiet status report"));
    }

    /// The sum of every status report not read yet and of the next one (whose interval is
    /// running now).
    async fn repairs_so_far(&mut self) -> VideoRepairs {
        let mut sum = VideoRepairs::default();
        for event in std::mem::take(&mut self.backlog) {
            sum = sum.add(VideoRepairs::of(&event));
        }
        while let Some(event) = self.media.try_next() {
            sum = sum.add(VideoRepairs::of(&event));
        }
        sum.add(self.next_repairs().await)
    }
}

/// The frames waiting on a sink channel.
fn frames_waiting(rx: &mut UnboundedReceiver<RemoteFrame>) -> Vec<RemoteFrame> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

/// The RTP timestamp steps between consecutive frames.
fn steps(frames: &[RemoteFrame]) -> Vec<u32> {
    frames.windows(2).map(|w| w[1].rtp_timestamp.wrapping_sub(w[0].rtp_timestamp)).collect()
}

/// Loss between one subscriber and the SFU is repaired for that subscriber alone, through the
/// real server: alice publishes a camera test pattern (one layer, so that one encoder's load
/// leaves the repairs their timing), bob and carol watch. Bob's media to and from the SFU goes
/// through a lossy UDP relay (the client's test hook points his and the SFU's candidates at it);
/// once the call is up and quiet, the relay drops the first transmission of three of the SFU's
/// video packets to bob. Bob's stack asks for them (NACK), the SFU resends them from what it
/// sent him, and every frame he decodes is complete, with none missing; no key frame is asked
/// for, so alice gets no PLI; carol's reports show nothing to repair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_between_one_viewer_and_the_sfu_is_repaired_for_that_viewer_only() {
    let (_tmp, dir) = record_dir("sfu-loss");
    let server = TestServer::start(config()).await;
    let endpoint = server.endpoint();
    let losses = ArmedLosses::new(&DROP_OFFSETS);
    let relay = Arc::new(LossyRelay::start(losses.policy()).await.unwrap());
    let fps = 15;
    let video = VideoConfig { width: 320, height: 240, fps, ..VideoConfig::default() };
    let mut alice =
        media_party_configured(&server, &endpoint, "alice", 440.0, Some(video), &dir, |mut media| {
            media.webrtc.simulcast = false;
            media
        })
        .await;
    let bobs_link = Arc::clone(&relay);
    let mut bob = media_party_configured(&server, &endpoint, "bob", 660.0, None, &dir, move |media| {
        media.with_signal_filter_for_tests(move |direction, other, payload| {
            assert_eq!(
                other.as_str(),
                callplus_signal::server::SFU_USER,
                "bob's media goes to the sfu alone"
            );
            match direction {
                SignalDirection::Outgoing => bobs_link.from_relayed(payload),
                SignalDirection::Incoming => bobs_link.to_relayed(payload),
            }
        })
    })
    .await;
    let mut carol = media_party(&server, "carol", 880.0, None, &dir).await;

    let call = group_call(&alice, vec![&mut bob, &mut carol], MediaType::AudioVideo).await;
    for viewer in [&mut bob, &mut carol] {
        viewer.expect_media("alice's video", first_frame("alice", MediaKind::Video)).await;
        viewer.expect_media("a report on the sfu connection alone", only_the_sfu).await;
    }
    let mut at_bob = bob.frames_from("alice", MediaKind::Video);
    let mut at_carol = carol.frames_from("alice", MediaKind::Video);
    let before = frames(&mut at_bob, 10, "alice's video at bob").await;
    let step = steps(&before)[0];
    assert!(steps(&before).iter().all(|s| *s == step), "alice's frames step evenly: {:?}", steps(&before));
    assert_eq!(losses.losses(), HashMap::new(), "nothing dropped before the relay is armed");

    // Once every report is quiet (the opening key frames and their requests are behind), bob's
    // link starts losing.
    for party in [&mut alice, &mut bob, &mut carol] {
        forget_media_events(party);
        party.quiet_report().await;
    }
    let _ = frames_waiting(&mut at_bob);
    let _ = frames_waiting(&mut at_carol);
    losses.arm();

    // Bob reports the repairs (or gaps given up instead).
    let want = DROP_OFFSETS.len() as u32;
    let mut at_bob_sum = VideoRepairs::default();
    timeout(MEDIA_WAIT, async {
        while at_bob_sum.recovered < want && at_bob_sum.lost == 0 {
            at_bob_sum = at_bob_sum.add(bob.next_repairs().await);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("bob reported only {at_bob_sum:?}"));
    // The reports of everyone since the relay was armed, up to one more interval each.
    let at_bob_sum = at_bob_sum.add(bob.repairs_so_far().await);
    let at_carol_sum = carol.repairs_so_far().await;
    let at_alice_sum = alice.repairs_so_far().await;
    let during_at_bob = frames_waiting(&mut at_bob);
    let during_at_carol = frames_waiting(&mut at_carol);
    let losses = losses.losses();
    eprintln!(
        "bob {at_bob_sum:?}, carol {at_carol_sum:?}, alice {at_alice_sum:?}; relay {losses:?}; \
         frames meanwhile at bob {}, at carol {}",
        during_at_bob.len(),
        during_at_carol.len()
    );

    // The losses happened, on bob's link alone (his one video stream), and the SFU resent each.
    assert_eq!(losses.len(), 1, "bob receives one video stream, through the relay: {losses:?}");
    for (ssrc, stream) in &losses {
        assert_eq!(stream.dropped, DROP_OFFSETS, "stream {ssrc}: the losses happened");
        for offset in DROP_OFFSETS {
            assert!(stream.resent.contains(&offset), "packet {offset} of {ssrc} was never resent by the SFU");
        }
    }
    // Bob: every loss repaired, no key frame needed; every frame complete and none missing.
    assert_eq!(
        (at_bob_sum.recovered, at_bob_sum.lost, at_bob_sum.plis_sent),
        (want, 0, 0),
        "bob: {at_bob_sum:?}"
    );
    assert!(during_at_bob.len() >= 10, "bob decoded only {} frames meanwhile", during_at_bob.len());
    assert!(
        steps(&during_at_bob).iter().all(|s| *s == step),
        "frames missing at bob: {:?}",
        steps(&during_at_bob)
    );
    // Alice (the publisher) was asked for no key frame.
    assert_eq!(at_alice_sum.plis_received, 0, "alice: {at_alice_sum:?}");
    // Carol saw no loss: nothing to repair, nothing asked, every frame there.
    assert_eq!(at_carol_sum, VideoRepairs::default(), "carol: {at_carol_sum:?}");
    assert!(steps(&during_at_carol).iter().all(|s| *s == step), "frames missing at carol");

    for party in [&alice, &bob, &carol] {
        party.party.client.hangup(Some(&call)).await.unwrap_or_default();
    }
}
