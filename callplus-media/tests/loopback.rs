//! Two or three adapters in one process, talking WebRTC over 127.0.0.1; the test relays their
//! signalling messages directly (no server). Every wait is on a real event with a timeout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use callplus_media::inspect::{IvfFile, decode_ogg_opus, dominant_frequency, read_ivf};
use callplus_media::lossy_relay::{DropRtp, LossyRelay, payload_type, sequence_number};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use callplus_media::vp8::is_keyframe;

use callplus_media::{
    AudioConfig, CallId, ChannelSink, DeviceId, EncodedSample, IvfSink, MediaAdapter, MediaError, MediaEvent,
    MediaKind, MediaPayload, MediaSink, MediaSource, MediaType, OggOpusSink, PeerSpec, RemoteFrame,
    StartMedia, TeeSink, TestPatternSource, ToneSource, UserId, VideoConfig, WebRtcConfig,
    WebRtcMediaAdapter,
};
use callplus_session::client::offers_to;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::time::timeout;

/// The VP8 payload type the adapters offer.
const VP8_PT: u8 = 96;

/// Generous: the machine is shared with other builds.
const WAIT: Duration = Duration::from_secs(30);

/// Where recordings go: `$CALLPLUS_MEDIA_RECORD_DIR` if set (to inspect them with ffprobe or
/// sox afterwards), else a temporary directory removed at the end.
fn record_dir() -> (Option<tempfile::TempDir>, std::path::PathBuf) {
    match std::env::var_os("CALLPLUS_MEDIA_RECORD_DIR") {
        Some(dir) => {
            std::fs::create_dir_all(&dir).unwrap();
            (None, dir.into())
        }
        None => {
            let tmp = tempfile::tempdir().unwrap();
            let path = tmp.path().to_owned();
            (Some(tmp), path)
        }
    }
}

fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn did(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

struct Party {
    user: UserId,
    device: DeviceId,
    adapter: Arc<WebRtcMediaAdapter>,
    /// Every event but signals (which the router relays).
    events: UnboundedReceiver<MediaEvent>,
}

/// Rewrites or drops a signal on its way from one user to another (loss-injection test).
type SignalFilter = Arc<dyn Fn(&UserId, &UserId, MediaPayload) -> Option<MediaPayload> + Send + Sync>;

/// Creates adapters for `names` and relays their signals to each other.
fn parties(names: &[&str], config: WebRtcConfig) -> Vec<Party> {
    parties_with(names, config, Arc::new(|_, _, payload| Some(payload)))
}

/// Like [`parties`], with every signal passed through `filter`.
fn parties_with(names: &[&str], config: WebRtcConfig, filter: SignalFilter) -> Vec<Party> {
    let mut adapters = HashMap::new();
    let mut made = Vec::new();
    for name in names {
        let (adapter, events) = WebRtcMediaAdapter::new(config.clone());
        let adapter = Arc::new(adapter);
        adapters.insert((uid(name), did("dev1")), Arc::clone(&adapter));
        made.push((uid(name), adapter, events));
    }
    let adapters = Arc::new(adapters);
    made.into_iter()
        .map(|(user, adapter, mut events)| {
            let (tx, rx): (UnboundedSender<MediaEvent>, _) = unbounded_channel();
            let (from_user, routes, filter) = (user.clone(), Arc::clone(&adapters), Arc::clone(&filter));
            tokio::spawn(async move {
                while let Some(event) = events.recv().await {
                    match event {
                        MediaEvent::Signal { call_id, to_user, to_device, payload } => {
                            let Some(payload) = filter(&from_user, &to_user, payload) else { continue };
                            let Some(to) = routes.get(&(to_user, to_device)) else { continue };
                            if let Err(e) =
                                to.handle_signal(&call_id, &from_user, &did("dev1"), payload).await
                            {
                                eprintln!("signal refused: {e}");
                            }
                        }
                        other => {
                            let _ = tx.send(other);
                        }
                    }
                }
            });
            Party { user, device: did("dev1"), adapter, events: rx }
        })
        .collect()
}

fn start_for(party: &Party, call: &CallId, others: &[&Party], media_type: MediaType) -> StartMedia {
    StartMedia {
        call_id: call.clone(),
        local_user: party.user.clone(),
        local_device: party.device.clone(),
        peers: others
            .iter()
            .map(|o| peer_spec(&party.user, &party.device, o.user.clone(), o.device.clone()))
            .collect(),
        media_type,
        ice_servers: vec![],
        sfu: None,
    }
}

/// Waits for the first event matching `pred`, skipping others.
async fn wait_event(
    rx: &mut UnboundedReceiver<MediaEvent>,
    what: &str,
    pred: impl Fn(&MediaEvent) -> bool,
) -> MediaEvent {
    timeout(WAIT, async {
        loop {
            let event = rx.recv().await.expect("adapter gone");
            if pred(&event) {
                return event;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Waits for `n` frames on a sink channel.
async fn frames(rx: &mut UnboundedReceiver<RemoteFrame>, n: usize, what: &str) -> Vec<RemoteFrame> {
    timeout(WAIT, async {
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            got.push(rx.recv().await.expect("sink dropped"));
        }
        got
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {n} {what} frames"))
}

fn channel_sink() -> (Box<dyn MediaSink>, UnboundedReceiver<RemoteFrame>) {
    let (sink, rx) = ChannelSink::new();
    (Box::new(sink), rx)
}

fn tone(freq: f64) -> Box<ToneSource> {
    Box::new(ToneSource::new(freq, 0.5, AudioConfig::default()).unwrap())
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

fn is_first_frame(user: &UserId, kind: MediaKind) -> impl Fn(&MediaEvent) -> bool + '_ {
    move |e| matches!(e, MediaEvent::FirstFrame { user: u, kind: k, .. } if u == user && *k == kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_call_carries_the_tone_both_ways() {
    let (_tmp, dir) = record_dir();
    let mut p = parties(&["alice", "bob"], WebRtcConfig::loopback());
    let call = CallId::new("call-audio").unwrap();
    let (alice_user, bob_user) = (p[0].user.clone(), p[1].user.clone());
    assert!(offers_to((&alice_user, &p[0].device), (&bob_user, &p[1].device)));

    p[0].adapter.switch_microphone(tone(440.0)).await.unwrap();
    p[1].adapter.switch_microphone(tone(660.0)).await.unwrap();
    let (a_sink, mut at_alice) = channel_sink();
    let (b_sink, mut at_bob) = channel_sink();
    let a_ogg = dir.join("alice-hears-bob.ogg");
    let b_ogg = dir.join("bob-hears-alice.ogg");
    p[0].adapter.set_sink(
        bob_user.clone(),
        MediaKind::Audio,
        Box::new(TeeSink::new(vec![Box::new(OggOpusSink::create(&a_ogg).unwrap()), a_sink])),
    );
    p[1].adapter.set_sink(
        alice_user.clone(),
        MediaKind::Audio,
        Box::new(TeeSink::new(vec![Box::new(OggOpusSink::create(&b_ogg).unwrap()), b_sink])),
    );
    // A sink for the local user itself must never be fed (no echo).
    let (self_sink, mut alice_self) = channel_sink();
    p[0].adapter.set_sink(alice_user.clone(), MediaKind::Audio, self_sink);

    let started = Instant::now();
    let s0 = start_for(&p[0], &call, &[&p[1]], MediaType::Audio);
    let s1 = start_for(&p[1], &call, &[&p[0]], MediaType::Audio);
    p[0].adapter.start(s0).await.unwrap();
    p[1].adapter.start(s1).await.unwrap();

    wait_event(&mut p[0].events, "alice's first frame", is_first_frame(&bob_user, MediaKind::Audio)).await;
    let alice_first = started.elapsed();
    wait_event(&mut p[1].events, "bob's first frame", is_first_frame(&alice_user, MediaKind::Audio)).await;
    let bob_first = started.elapsed();
    eprintln!("start -> first remote audio frame: alice {alice_first:?}, bob {bob_first:?}");

    // Two seconds of audio each way.
    let got_a = frames(&mut at_alice, 100, "audio at alice").await;
    let got_b = frames(&mut at_bob, 100, "audio at bob").await;
    assert!(got_a.iter().chain(&got_b).all(|f| f.kind == MediaKind::Audio && !f.data.is_empty()));

    // Audio level of the remote tone (amplitude 0.5 -> about 50).
    let level = wait_event(
        &mut p[1].events,
        "audio level",
        |e| matches!(e, MediaEvent::AudioLevel { user, .. } if *user == alice_user),
    )
    .await;
    let MediaEvent::AudioLevel { level, .. } = level else { unreachable!() };
    assert!((35..=65).contains(&level), "alice's level at bob: {level}");

    p[0].adapter.stop(&call).await.unwrap();
    p[1].adapter.stop(&call).await.unwrap();
    assert!(alice_self.try_recv().is_err(), "the local user's own audio was played back");

    for (path, freq) in [(&a_ogg, 660.0), (&b_ogg, 440.0)] {
        let pcm = decode_ogg_opus(path).expect("the recording decodes");
        assert!(pcm.len() >= 48_000 * 3 / 2, "{} holds only {} samples", path.display(), pcm.len());
        let tail = &pcm[pcm.len() - 48_000..];
        let found = dominant_frequency(tail);
        assert!((found - freq).abs() <= 10.0, "{}: dominant {found} Hz, sent {freq} Hz", path.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_call_carries_vp8_both_ways_and_camera_off_stops_it() {
    let (_tmp, dir) = record_dir();
    let mut p = parties(&["alice", "bob"], WebRtcConfig::loopback());
    let call = CallId::new("call-video").unwrap();
    let (alice_user, bob_user) = (p[0].user.clone(), p[1].user.clone());
    let sizes = [(320u32, 240u32), (160, 120)];
    for (party, (width, height)) in p.iter().zip(sizes) {
        party.adapter.switch_microphone(tone(500.0)).await.unwrap();
        let config = VideoConfig { width, height, fps: 15, ..VideoConfig::default() };
        party.adapter.switch_camera(Box::new(TestPatternSource::new(config).unwrap())).await.unwrap();
    }
    let a_ivf = dir.join("alice-sees-bob.ivf");
    let b_ivf = dir.join("bob-sees-alice.ivf");
    let (a_video, mut a_video_rx) = channel_sink();
    let (b_video, mut b_video_rx) = channel_sink();
    let (b_audio, mut b_audio_rx) = channel_sink();
    p[0].adapter.set_sink(
        bob_user.clone(),
        MediaKind::Video,
        Box::new(TeeSink::new(vec![Box::new(IvfSink::create(&a_ivf).unwrap()), a_video])),
    );
    p[1].adapter.set_sink(
        alice_user.clone(),
        MediaKind::Video,
        Box::new(TeeSink::new(vec![Box::new(IvfSink::create(&b_ivf).unwrap()), b_video])),
    );
    p[1].adapter.set_sink(alice_user.clone(), MediaKind::Audio, b_audio);

    let started = Instant::now();
    let s0 = start_for(&p[0], &call, &[&p[1]], MediaType::AudioVideo);
    let s1 = start_for(&p[1], &call, &[&p[0]], MediaType::AudioVideo);
    p[0].adapter.start(s0).await.unwrap();
    p[1].adapter.start(s1).await.unwrap();
    wait_event(&mut p[0].events, "alice's first video", is_first_frame(&bob_user, MediaKind::Video)).await;
    eprintln!("start -> first remote video frame at alice: {:?}", started.elapsed());
    wait_event(&mut p[1].events, "bob's first video", is_first_frame(&alice_user, MediaKind::Video)).await;

    let got_a = frames(&mut a_video_rx, 20, "video at alice").await;
    let got_b = frames(&mut b_video_rx, 20, "video at bob").await;
    assert!(got_a[0].keyframe && got_b[0].keyframe, "the first delivered frame is a key frame");

    // Stats: plausible numbers from the real stack.
    let stats = wait_event(
        &mut p[0].events,
        "stats with bitrate",
        |e| matches!(e, MediaEvent::Stats(s) if s.per_peer.iter().any(|pp| pp.bitrate_kbps > 0.0)),
    )
    .await;
    let MediaEvent::Stats(stats) = stats else { unreachable!() };
    eprintln!("stats at alice: {stats:?}");
    assert_eq!(stats.call_id, call);
    assert_eq!(stats.per_peer.len(), 1);
    let peer = &stats.per_peer[0];
    assert_eq!(peer.user, bob_user);
    assert!(peer.bitrate_kbps > 10.0 && peer.bitrate_kbps < 10_000.0, "bitrate {}", peer.bitrate_kbps);
    assert!((0.0..=100.0).contains(&peer.recv_loss_pct));
    assert!((0.0..=100.0).contains(&stats.send_loss_pct));
    assert!(stats.rtt_ms.is_none_or(|rtt| (0.0..1000.0).contains(&rtt)));

    // Camera off at alice: once the command is acknowledged, nothing more is sent. Frames
    // already in flight are flushed by waiting for half a second of audio sent afterwards.
    p[0].adapter.set_camera_enabled(false).await.unwrap();
    assert_no_more_video(&mut b_audio_rx, &mut b_video_rx, "the camera was turned off").await;
    // Bob's camera is still on.
    frames(&mut a_video_rx, 5, "video at alice while bob's camera is on").await;

    // Camera back on: video flows again (starting with a key frame).
    p[0].adapter.set_camera_enabled(true).await.unwrap();
    let again = frames(&mut b_video_rx, 3, "video after camera on").await;
    assert!(again[0].keyframe);

    // Bob mutes all remote audio: alice's audio no longer reaches his sink while her video goes
    // on (half a second of video flushes, a second shows none), yet it is still received: her
    // audio level keeps being reported. Unmuted, it plays again at once.
    assert!(!p[1].adapter.remote_audio_muted());
    p[1].adapter.set_remote_audio_muted(true);
    assert!(p[1].adapter.remote_audio_muted());
    assert_stopped(&mut b_video_rx, &mut b_audio_rx, (8, 15), "remote audio was muted").await;
    while p[1].events.try_recv().is_ok() {}
    let is_alice_level = |e: &MediaEvent| matches!(e, MediaEvent::AudioLevel { user, level, .. } if *user == alice_user && *level > 0);
    wait_event(&mut p[1].events, "alice's level while muted", is_alice_level).await;
    p[1].adapter.set_remote_audio_muted(false);
    frames(&mut b_audio_rx, 10, "audio after unmuting").await;

    // Downgrade to AUDIO: video stops, audio goes on, no renegotiation.
    p[0].adapter.set_media_type(&call, MediaType::Audio).await.unwrap();
    assert_no_more_video(&mut b_audio_rx, &mut b_video_rx, "the call became AUDIO").await;

    p[0].adapter.stop(&call).await.unwrap();
    p[1].adapter.stop(&call).await.unwrap();
    for (path, (width, height)) in [(&a_ivf, sizes[1]), (&b_ivf, sizes[0])] {
        let IvfFile { fourcc, width: w, height: h, frame_count: count, frames } =
            read_ivf(path).expect("the recording parses");
        assert_eq!(&fourcc, b"VP80");
        assert_eq!((u32::from(w), u32::from(h)), (width, height), "{}", path.display());
        assert_eq!(count as usize, frames.len());
        assert!(frames.len() >= 20);
        assert_eq!(callplus_media::vp8::keyframe_dimensions(&frames[0]), Some((w, h)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_party_mesh_everyone_hears_everyone() {
    let names = ["alice", "bob", "carol"];
    let mut p = parties(&names, WebRtcConfig::loopback());
    let call = CallId::new("call-mesh").unwrap();
    let mut receivers = Vec::new();
    for (i, party) in p.iter().enumerate() {
        party.adapter.switch_microphone(tone(300.0 + 200.0 * i as f64)).await.unwrap();
        for (j, other) in p.iter().enumerate() {
            if i != j {
                let (sink, rx) = channel_sink();
                party.adapter.set_sink(other.user.clone(), MediaKind::Audio, sink);
                receivers.push((party.user.clone(), other.user.clone(), rx));
            }
        }
    }
    for i in 0..p.len() {
        let others: Vec<&Party> = p.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, o)| o).collect();
        let start = start_for(&p[i], &call, &others, MediaType::Audio);
        p[i].adapter.start(start).await.unwrap();
    }
    for (listener, speaker, rx) in &mut receivers {
        frames(rx, 25, &format!("audio from {speaker} at {listener}")).await;
    }
    for party in &mut p {
        let connected = wait_event(
            &mut party.events,
            "a stats report with both peers",
            |e| matches!(e, MediaEvent::Stats(s) if s.per_peer.len() == 2),
        )
        .await;
        assert!(matches!(connected, MediaEvent::Stats(_)));
    }
    for party in &p {
        party.adapter.stop(&call).await.unwrap();
    }
}

#[tokio::test]
async fn mesh_beyond_the_limit_is_refused() {
    let config = WebRtcConfig { max_mesh_audio: 2, ..WebRtcConfig::loopback() };
    let (adapter, _events) = WebRtcMediaAdapter::new(config);
    let (me, dev) = (uid("alice"), did("dev1"));
    let start = StartMedia {
        call_id: CallId::new("big").unwrap(),
        local_user: me.clone(),
        local_device: dev.clone(),
        peers: vec![
            peer_spec(&me, &dev, uid("bob"), did("dev1")),
            peer_spec(&me, &dev, uid("carol"), did("dev1")),
        ],
        media_type: MediaType::Audio,
        ice_servers: vec![],
        sfu: None,
    };
    let err = adapter.start(start).await.unwrap_err();
    assert!(matches!(err, MediaError::MeshTooLarge { participants: 3, max: 2 }), "{err}");

    // The default limit for video is 4 participants.
    let peers = ["b", "c", "d", "e"].iter().map(|u| peer_spec(&me, &dev, uid(u), did("x"))).collect();
    let start = StartMedia {
        call_id: CallId::new("big-video").unwrap(),
        local_user: me.clone(),
        local_device: dev.clone(),
        peers,
        media_type: MediaType::AudioVideo,
        ice_servers: vec![],
        sfu: None,
    };
    let (adapter, _events) = WebRtcMediaAdapter::new(WebRtcConfig::loopback());
    let err = adapter.start(start).await.unwrap_err();
    assert!(matches!(err, MediaError::MeshTooLarge { participants: 5, max: 4 }), "{err}");

    // The local user cannot be its own peer (its audio would loop back).
    let start = StartMedia {
        call_id: CallId::new("self").unwrap(),
        local_user: me.clone(),
        local_device: dev.clone(),
        peers: vec![peer_spec(&me, &dev, me.clone(), did("other"))],
        media_type: MediaType::Audio,
        ice_servers: vec![],
        sfu: None,
    };
    assert!(matches!(adapter.start(start).await, Err(MediaError::InvalidPeer(..))));
}

/// Drops every fifth RTP packet (20 %).
fn every_fifth() -> DropRtp {
    let mut rtp = 0u64;
    Box::new(move |_| {
        rtp += 1;
        rtp.is_multiple_of(5)
    })
}

/// Alice and bob, with everything alice sends to bob going through a [`LossyRelay`] that drops
/// what `drop_rtp` says: alice sees bob at the relay, bob sees alice only through it.
async fn relayed_parties(drop_rtp: DropRtp) -> Vec<Party> {
    let relay = LossyRelay::start(drop_rtp).await.unwrap();
    let filter: SignalFilter = Arc::new(move |from, _to, payload| match from.as_str() {
        "bob" => relay.from_relayed(payload),
        _ => relay.to_relayed(payload),
    });
    parties_with(&["alice", "bob"], WebRtcConfig::loopback(), filter)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_loss_shows_in_the_reports() {
    let mut p = relayed_parties(every_fifth()).await;
    let call = CallId::new("call-lossy").unwrap();
    let alice_user = p[0].user.clone();
    p[0].adapter.switch_microphone(tone(440.0)).await.unwrap();
    p[1].adapter.switch_microphone(tone(660.0)).await.unwrap();
    let s0 = start_for(&p[0], &call, &[&p[1]], MediaType::Audio);
    let s1 = start_for(&p[1], &call, &[&p[0]], MediaType::Audio);
    p[0].adapter.start(s0).await.unwrap();
    p[1].adapter.start(s1).await.unwrap();
    wait_event(&mut p[1].events, "audio through the relay", is_first_frame(&alice_user, MediaKind::Audio))
        .await;

    // Bob's receive loss from alice, over five reports with traffic: about 20 %.
    let mut losses = Vec::new();
    while losses.len() < 5 {
        let report = wait_event(
            &mut p[1].events,
            "bob's stats",
            |e| matches!(e, MediaEvent::Stats(s) if s.per_peer.iter().any(|pp| pp.bitrate_kbps > 0.0)),
        )
        .await;
        let MediaEvent::Stats(stats) = report else { unreachable!() };
        losses.push(stats.per_peer[0].recv_loss_pct);
    }
    let mean = losses.iter().sum::<f64>() / losses.len() as f64;
    eprintln!("bob's receive loss from alice: {losses:?}, mean {mean:.1} %");
    assert!((10.0..=30.0).contains(&mean), "receive loss {losses:?}");

    // Alice hears about it through bob's receiver reports.
    let report = wait_event(
        &mut p[0].events,
        "alice's send loss",
        |e| matches!(e, MediaEvent::Stats(s) if s.send_loss_pct > 5.0),
    )
    .await;
    let MediaEvent::Stats(stats) = report else { unreachable!() };
    eprintln!("alice's send loss: {:.1} %", stats.send_loss_pct);
    assert!((10.0..=30.0).contains(&stats.send_loss_pct), "send loss {}", stats.send_loss_pct);

    p[0].adapter.stop(&call).await.unwrap();
    p[1].adapter.stop(&call).await.unwrap();
}

/// What a camera produced and was asked for (see [`AuditedCamera`]).
#[derive(Default)]
struct CameraLog {
    /// `request_keyframe` calls not yet followed by a key frame.
    pending_request: bool,
    /// Every key frame produced, and whether a request came before it.
    keyframes: Vec<(Bytes, bool)>,
    /// Every frame produced, in order.
    frames: Vec<Bytes>,
}

/// A [`TestPatternSource`] that logs its key frames and whether each was asked for. libvpx also
/// makes a key frame on its own every 128 frames (over 8 s at 15 fps, beyond the test); the log
/// tells such a key frame apart from one asked for.
struct AuditedCamera {
    inner: TestPatternSource,
    log: Arc<std::sync::Mutex<CameraLog>>,
}

#[async_trait::async_trait]
impl MediaSource for AuditedCamera {
    fn kind(&self) -> MediaKind {
        MediaKind::Video
    }

    async fn next_sample(&mut self) -> Option<EncodedSample> {
        let sample = self.inner.next_sample().await?;
        let mut log = self.log.lock().unwrap();
        log.frames.push(sample.data.clone());
        if is_keyframe(&sample.data) {
            let requested = std::mem::take(&mut log.pending_request);
            log.keyframes.push((sample.data.clone(), requested));
        }
        drop(log);
        Some(sample)
    }

    fn apply_video_config(&mut self, config: &VideoConfig) {
        self.inner.apply_video_config(config);
    }

    fn request_keyframe(&mut self) {
        self.log.lock().unwrap().pending_request = true;
        self.inner.request_keyframe();
    }
}

/// Video RTP packets the relay drops at the start: alice's opening key frame and the inter
/// frames behind it (well under a second of the test pattern; any number from one on loses the
/// key frame).
const DROPPED_VIDEO_PACKETS: usize = 12;

/// Alice (an audited test-pattern camera) and bob in an AUDIO_VIDEO call through the lossy
/// relay, bob's sink for alice's video attached, both sides started.
struct RelayedVideoCall {
    p: Vec<Party>,
    call: CallId,
    /// What alice's camera made, and which key frames were asked for.
    camera: Arc<std::sync::Mutex<CameraLog>>,
    /// Alice's video as bob's sink receives it.
    b_video_rx: UnboundedReceiver<RemoteFrame>,
    started: Instant,
}

impl RelayedVideoCall {
    async fn start(drop_rtp: DropRtp, call: &str) -> RelayedVideoCall {
        let p = relayed_parties(drop_rtp).await;
        let call = CallId::new(call).unwrap();
        let camera = Arc::new(std::sync::Mutex::new(CameraLog::default()));
        let audited = AuditedCamera {
            inner: TestPatternSource::new(VideoConfig::default()).unwrap(),
            log: Arc::clone(&camera),
        };
        p[0].adapter.switch_camera(Box::new(audited)).await.unwrap();
        let (b_video, b_video_rx) = channel_sink();
        p[1].adapter.set_sink(p[0].user.clone(), MediaKind::Video, b_video);
        let started = Instant::now();
        p[0].adapter.start(start_for(&p[0], &call, &[&p[1]], MediaType::AudioVideo)).await.unwrap();
        p[1].adapter.start(start_for(&p[1], &call, &[&p[0]], MediaType::AudioVideo)).await.unwrap();
        RelayedVideoCall { p, call, camera, b_video_rx, started }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_key_frame_is_recovered_by_pli() {
    // The relay drops alice's first video packets, so bob's opening key frame never arrives;
    // audio and RTCP pass. Only a PLI from bob and a key frame made for it can start his video.
    let dropped = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&dropped);
    let drop_rtp: DropRtp = Box::new(move |packet| {
        payload_type(packet) == VP8_PT
            && counter
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < DROPPED_VIDEO_PACKETS).then_some(n + 1)
                })
                .is_ok()
    });
    let RelayedVideoCall { mut p, call, camera: log, mut b_video_rx, started } =
        RelayedVideoCall::start(drop_rtp, "call-pli").await;
    let (alice_user, bob_user) = (p[0].user.clone(), p[1].user.clone());

    // Bob's first delivered frame is a key frame, and then video flows.
    let mut got = frames(&mut b_video_rx, 1, "video at bob after the lost key frame").await;
    eprintln!("start -> first frame at bob: {:?}", started.elapsed());
    got.extend(frames(&mut b_video_rx, 14, "video at bob after the key frame").await);
    eprintln!("start -> 15 frames at bob despite the lost key frame: {:?}", started.elapsed());
    assert!(got[0].keyframe, "undecodable frames were delivered before a key frame");
    assert_eq!(dropped.load(Ordering::Acquire), DROPPED_VIDEO_PACKETS);
    {
        let log = log.lock().unwrap();
        let produced: Vec<bool> = log.keyframes.iter().map(|(_, requested)| *requested).collect();
        eprintln!("alice's key frames (requested?): {produced:?}");
        let index = log.keyframes.iter().position(|(data, _)| *data == got[0].data);
        let Some(index) = index else { panic!("bob's key frame is not one alice made") };
        assert!(index > 0, "bob got alice's opening key frame, which the relay dropped");
        assert!(log.keyframes[index].1, "bob's key frame was a periodic one, not one asked for");
    }

    // The status reports count the request on both sides.
    let sent = wait_event(
        &mut p[1].events,
        "bob's report of a PLI sent",
        |e| matches!(e, MediaEvent::Stats(s) if s.per_peer.iter().any(|pp| pp.keyframe_requests_sent > 0)),
    )
    .await;
    let received = wait_event(
        &mut p[0].events,
        "alice's report of a key-frame request received",
        |e| matches!(e, MediaEvent::Stats(s) if s.per_peer.iter().any(|pp| pp.keyframe_requests_received > 0)),
    )
    .await;
    let (MediaEvent::Stats(sent), MediaEvent::Stats(received)) = (sent, received) else { unreachable!() };
    assert_eq!(sent.per_peer[0].user, alice_user);
    assert_eq!(received.per_peer[0].user, bob_user);

    p[0].adapter.stop(&call).await.unwrap();
    p[1].adapter.stop(&call).await.unwrap();
}

/// Video packets the relay drops (first transmission only), counted in sequence numbers after
/// the last packet of alice's opening key frame.
const DROP_AFTER_KEY_FRAME: [u16; 3] = [4, 10, 17];
/// Frames bob must get, every one of them: well past the last dropped packet.
const FRAMES_AFTER_LOSS: usize = 30;

/// What the relay did to alice's video in [`single_lost_packets_are_repaired_by_retransmission`].
#[derive(Default)]
struct Retransmissions {
    /// Sequence number of the opening key frame's marker packet.
    key_frame_end: Option<u16>,
    /// Offsets (after `key_frame_end`) dropped once.
    dropped: Vec<u16>,
    /// Offsets seen again after being dropped: the sender's retransmissions.
    resent: Vec<u16>,
}

/// Drops the alice → bob video packets at `offsets` (sequence numbers after the opening key
/// frame's last packet): their first transmission, and with `resends` their retransmissions too.
fn drop_after_key_frame(
    offsets: &'static [u16],
    resends: bool,
    log: Arc<std::sync::Mutex<Retransmissions>>,
) -> DropRtp {
    Box::new(move |packet| {
        if payload_type(packet) != VP8_PT {
            return false;
        }
        let mut log = log.lock().unwrap();
        let seq = sequence_number(packet);
        let Some(end) = log.key_frame_end else {
            if packet[1] & 0x80 != 0 {
                log.key_frame_end = Some(seq);
            }
            return false;
        };
        let offset = seq.wrapping_sub(end);
        if !offsets.contains(&offset) {
            return false;
        }
        if log.dropped.contains(&offset) {
            log.resent.push(offset);
            return resends;
        }
        log.dropped.push(offset);
        true
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_lost_packets_are_repaired_by_retransmission() {
    // The relay drops the first transmission of three single video packets after alice's opening
    // key frame and lets everything else through, retransmissions included. Bob's stack asks for
    // them (NACK), alice's resends them, and bob's reorder buffer puts them back in place: every
    // frame alice encoded reaches bob's sink intact, and nobody needs a key frame.
    let relay_log = Arc::new(std::sync::Mutex::new(Retransmissions::default()));
    let drop_rtp = drop_after_key_frame(&DROP_AFTER_KEY_FRAME, false, Arc::clone(&relay_log));
    let RelayedVideoCall { mut p, call, camera: camera_log, mut b_video_rx, started } =
        RelayedVideoCall::start(drop_rtp, "call-nack").await;

    let got = frames(&mut b_video_rx, FRAMES_AFTER_LOSS, "video at bob").await;
    eprintln!("start -> {FRAMES_AFTER_LOSS} frames at bob: {:?}", started.elapsed());
    {
        let relay = relay_log.lock().unwrap();
        eprintln!("relay: dropped {:?}, resent {:?}", relay.dropped, relay.resent);
        assert_eq!(relay.dropped, DROP_AFTER_KEY_FRAME, "the losses happened");
        for offset in DROP_AFTER_KEY_FRAME {
            assert!(relay.resent.contains(&offset), "packet {offset} was never retransmitted");
        }
    }
    // Bob got alice's frames byte for byte, none missing, from her opening key frame on.
    assert!(got[0].keyframe, "bob's first frame is not a key frame");
    assert!(got[1..].iter().all(|f| !f.keyframe), "a key frame had to be made (PLI)");
    {
        let log = camera_log.lock().unwrap();
        let first =
            log.frames.iter().position(|f| *f == got[0].data).expect("bob's first frame is not alice's");
        let sent = &log.frames[first..first + FRAMES_AFTER_LOSS];
        for (i, (sent, got)) in sent.iter().zip(&got).enumerate() {
            assert!(*sent == got.data, "frame {i} at bob differs from what alice sent");
        }
    }

    // Bob's reports count the repairs and no key-frame request.
    let mut recovered = 0;
    while recovered < DROP_AFTER_KEY_FRAME.len() as u32 {
        let report = wait_event(&mut p[1].events, "bob's report of recovered packets", |e| {
            matches!(e, MediaEvent::Stats(_))
        })
        .await;
        let MediaEvent::Stats(stats) = report else { unreachable!() };
        for peer in &stats.per_peer {
            assert_eq!(peer.keyframe_requests_sent, 0, "bob asked for a key frame");
            assert_eq!(peer.video_packets_lost, 0, "bob gave up a gap");
            recovered += peer.video_packets_recovered;
        }
    }
    assert_eq!(recovered, DROP_AFTER_KEY_FRAME.len() as u32);
    eprintln!("start -> reports checked: {:?}", started.elapsed());

    p[0].adapter.stop(&call).await.unwrap();
    p[1].adapter.stop(&call).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offer_and_answer_advertise_nack_for_video_only() {
    // Retransmissions are plain resends on the media SSRC (no RTX stream), asked for by NACK,
    // which both sides must advertise for VP8; Opus is never held back or resent.
    let sdps = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&sdps);
    let filter: SignalFilter = Arc::new(move |_, _, payload| {
        if let MediaPayload::SdpOffer(sdp) | MediaPayload::SdpAnswer(sdp) = &payload {
            seen.lock().unwrap().push(sdp.clone());
        }
        Some(payload)
    });
    let mut p = parties_with(&["alice", "bob"], WebRtcConfig::loopback(), filter);
    let call = CallId::new("call-sdp").unwrap();
    p[0].adapter.start(start_for(&p[0], &call, &[&p[1]], MediaType::AudioVideo)).await.unwrap();
    p[1].adapter.start(start_for(&p[1], &call, &[&p[0]], MediaType::AudioVideo)).await.unwrap();
    for party in &mut p {
        wait_event(&mut party.events, "connected", |e| matches!(e, MediaEvent::PeerConnected { .. })).await;
    }
    let sdps = sdps.lock().unwrap().clone();
    assert_eq!(sdps.len(), 2, "one offer, one answer");
    for sdp in &sdps {
        let lines: Vec<&str> = sdp.lines().collect();
        assert!(lines.contains(&"a=rtcp-fb:96 nack"), "no NACK for VP8:\n{sdp}");
        assert!(lines.contains(&"a=rtcp-fb:96 nack pli"), "no PLI for VP8:\n{sdp}");
        assert!(!lines.iter().any(|l| l.starts_with("a=rtcp-fb:111 nack")), "NACK for Opus:\n{sdp}");
        assert!(!sdp.contains("rtx/"), "an RTX stream is advertised:\n{sdp}");
        // Peer to peer, video goes out in one layer (simulcast is for the SFU).
        assert!(!sdp.contains("a=simulcast") && !sdp.contains("a=rid:"), "simulcast in a 1:1 call:\n{sdp}");
    }
    p[0].adapter.stop(&call).await.unwrap();
    p[1].adapter.stop(&call).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packet_lost_for_good_is_given_up_and_costs_a_key_frame() {
    // The relay drops one video packet after the opening key frame and every resend of it: bob's
    // reorder buffer gives the gap up at its deadline, the depacketizer sees the hole, and only a
    // key frame asked for (PLI) lets video through again.
    let relay_log = Arc::new(std::sync::Mutex::new(Retransmissions::default()));
    let drop_rtp = drop_after_key_frame(&[4], true, Arc::clone(&relay_log));
    let RelayedVideoCall { mut p, call, camera: camera_log, mut b_video_rx, started } =
        RelayedVideoCall::start(drop_rtp, "call-gap").await;

    // The opening key frame, then frames until one is a key frame again.
    let first = frames(&mut b_video_rx, 1, "video at bob").await;
    assert!(first[0].keyframe);
    let recovered = timeout(WAIT, async {
        loop {
            let frame = b_video_rx.recv().await.expect("sink dropped");
            if frame.keyframe {
                return frame;
            }
        }
    })
    .await
    .expect("no key frame after the lost packet");
    eprintln!("start -> key frame after the lost packet: {:?}", started.elapsed());
    {
        let relay = relay_log.lock().unwrap();
        eprintln!("relay: dropped {:?}, resends dropped {:?}", relay.dropped, relay.resent);
        assert_eq!(relay.dropped, [4]);
        assert!(!relay.resent.is_empty(), "bob never asked for the packet again");
        let log = camera_log.lock().unwrap();
        let index = log.keyframes.iter().position(|(data, _)| *data == recovered.data);
        let Some(index) = index else { panic!("bob's key frame is not one alice made") };
        assert!(index > 0 && log.keyframes[index].1, "bob's second key frame was not asked for");
    }

    // Bob's reports count the gap given up and the PLI.
    let (mut lost, mut plis) = (0, 0);
    while lost == 0 || plis == 0 {
        let report =
            wait_event(&mut p[1].events, "bob's report of the gap", |e| matches!(e, MediaEvent::Stats(_)))
                .await;
        let MediaEvent::Stats(stats) = report else { unreachable!() };
        for peer in &stats.per_peer {
            lost += peer.video_packets_lost;
            plis += peer.keyframe_requests_sent;
        }
    }
    assert_eq!(lost, 1, "one packet given up");

    p[0].adapter.stop(&call).await.unwrap();
    p[1].adapter.stop(&call).await.unwrap();
}

/// A peer whose offer role follows the client engine's glare-free rule.
fn peer_spec(local_user: &UserId, local_device: &DeviceId, user_id: UserId, device_id: DeviceId) -> PeerSpec {
    let offerer = offers_to((local_user, local_device), (&user_id, &device_id));
    PeerSpec { user_id, device_id, offerer }
}
