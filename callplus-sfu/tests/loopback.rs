//! The SFU with real peers in one process over 127.0.0.1: each participant is a callplus-media
//! adapter in SFU mode (test-pattern camera, tone microphone, file sinks), the test relays the
//! signals between the adapters and the SFU as the signalling server would. Every wait is on a
//! real event with a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use callplus_media::inspect::{decode_ogg_opus, dominant_frequency, read_ivf};
use callplus_media::lossy_relay::{ArmedLosses, LossyRelay, is_video, sequence_number, ssrc};
use callplus_media::vp8::keyframe_dimensions;
use callplus_media::{
    AudioConfig, CallId, ChannelSink, DeviceId, EncodedSample, IvfSink, MediaAdapter, MediaEvent, MediaKind,
    MediaPayload, MediaSource, MediaType, OggOpusSink, RemoteFrame, SfuRoute, StartMedia, TeeSink,
    TestPatternSource, ToneSource, UserId, VideoConfig, VideoLayer, WebRtcConfig, WebRtcMediaAdapter,
};
use callplus_sfu::{Sfu, SfuConfig, SfuEvent};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::time::timeout;

/// Generous: the machine is shared with other builds.
const WAIT: Duration = Duration::from_secs(30);

/// Each test runs three encoding participants and an SFU; on a small machine two at once starve
/// each other's timers (a retransmission arriving after the receiver gave its gap up). The tests
/// take turns.
static ONE_CALL_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn did(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

/// The SFU's signalling address, as the adapters see it.
fn sfu_user() -> UserId {
    uid("sfu")
}

fn sfu_device() -> DeviceId {
    did("sfu-1")
}

fn in_an_hour() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600
}

fn record_dir() -> (Option<tempfile::TempDir>, PathBuf) {
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

struct Party {
    user: UserId,
    device: DeviceId,
    adapter: Arc<WebRtcMediaAdapter>,
    /// Every event but signals.
    events: UnboundedReceiver<MediaEvent>,
    /// Frames per remote user and kind (to wait for enough media).
    frames: HashMap<(UserId, MediaKind), UnboundedReceiver<RemoteFrame>>,
}

/// Results of the signals the adapters sent to the SFU: (sender, result).
type Refusals = UnboundedReceiver<(UserId, Result<(), String>)>;

struct Net {
    sfu: Arc<Sfu>,
    parties: Vec<Party>,
    /// What the SFU made of each signal from a participant.
    sfu_results: Refusals,
    /// Signals the SFU sent, per recipient user.
    delivered: Arc<std::sync::Mutex<HashMap<UserId, usize>>>,
}

/// Rewrites or drops a signal on its way (from, to); the SFU is [`sfu_user`].
type SignalFilter = Arc<dyn Fn(&UserId, &UserId, MediaPayload) -> Option<MediaPayload> + Send + Sync>;

/// An SFU and adapters for `names` (device "dev1" each), with signals relayed both ways.
fn net(names: &[&str]) -> Net {
    net_with(names, Arc::new(|_, _, payload| Some(payload)))
}

/// Like [`net`], with every signal passed through `filter`.
fn net_with(names: &[&str], filter: SignalFilter) -> Net {
    net_configured(names, filter, WebRtcConfig::loopback())
}

/// Like [`net_with`], the adapters made with `config`.
fn net_configured(names: &[&str], filter: SignalFilter, config: WebRtcConfig) -> Net {
    let (sfu, mut sfu_events) = Sfu::new(SfuConfig {
        bind_addrs: vec!["127.0.0.1:0".to_owned()],
        ice_servers: vec![],
        token_secret: b"test secret".to_vec(),
    });
    let sfu = Arc::new(sfu);
    let mut adapters = HashMap::new();
    let mut made = Vec::new();
    for name in names {
        let (adapter, events) = WebRtcMediaAdapter::new(config.clone());
        let adapter = Arc::new(adapter);
        adapters.insert((uid(name), did("dev1")), Arc::clone(&adapter));
        made.push((uid(name), adapter, events));
    }
    let adapters = Arc::new(adapters);
    let delivered = Arc::new(std::sync::Mutex::new(HashMap::new()));
    {
        let (adapters, delivered, filter) =
            (Arc::clone(&adapters), Arc::clone(&delivered), Arc::clone(&filter));
        tokio::spawn(async move {
            while let Some(event) = sfu_events.recv().await {
                if let SfuEvent::Signal { call_id, to_user, to_device, payload } = event {
                    let Some(payload) = filter(&sfu_user(), &to_user, payload) else { continue };
                    *delivered.lock().unwrap().entry(to_user.clone()).or_insert(0) += 1;
                    let Some(to) = adapters.get(&(to_user, to_device)) else { continue };
                    if let Err(e) = to.handle_signal(&call_id, &sfu_user(), &sfu_device(), payload).await {
                        eprintln!("adapter refused an SFU signal: {e}");
                    }
                }
            }
        });
    }
    let (results_tx, sfu_results): (UnboundedSender<_>, _) = unbounded_channel();
    let parties = made
        .into_iter()
        .map(|(user, adapter, mut events)| {
            let (tx, rx) = unbounded_channel();
            let (from, sfu, results) = (user.clone(), Arc::clone(&sfu), results_tx.clone());
            let filter = Arc::clone(&filter);
            tokio::spawn(async move {
                while let Some(event) = events.recv().await {
                    match event {
                        MediaEvent::Signal { call_id, to_user, payload, .. } => {
                            assert_eq!(to_user, sfu_user(), "through an SFU, every signal goes to it");
                            let Some(payload) = filter(&from, &to_user, payload) else { continue };
                            let result = sfu.handle_signal(&call_id, &from, &did("dev1"), payload).await;
                            let _ = results.send((from.clone(), result.map_err(|e| format!("{e:?}"))));
                        }
                        other => {
                            let _ = tx.send(other);
                        }
                    }
                }
            });
            Party { user, device: did("dev1"), adapter, events: rx, frames: HashMap::new() }
        })
        .collect();
    Net { sfu, parties, sfu_results, delivered }
}

fn route(token: String) -> SfuRoute {
    SfuRoute { user_id: sfu_user(), device_id: sfu_device(), token }
}

fn start(party: &Party, call: &CallId, others: &[UserId], token: String) -> StartMedia {
    StartMedia {
        call_id: call.clone(),
        local_user: party.user.clone(),
        local_device: party.device.clone(),
        peers: others
            .iter()
            .map(|u| callplus_media::PeerSpec { user_id: u.clone(), device_id: did("dev1"), offerer: false })
            .collect(),
        media_type: MediaType::AudioVideo,
        ice_servers: vec![],
        sfu: Some(route(token)),
    }
}

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

/// Every party joins `call` with a token of its own and waits for the first frames of every
/// other: the users, in the order of `net.parties`.
async fn join_and_see_everyone(net: &mut Net, call: &CallId) -> Vec<UserId> {
    let users: Vec<UserId> = net.parties.iter().map(|p| p.user.clone()).collect();
    let others = |me: &UserId| -> Vec<UserId> { users.iter().filter(|u| *u != me).cloned().collect() };
    for party in &net.parties {
        let token = net.sfu.issue_token(call, &party.user, &party.device, in_an_hour());
        party.adapter.start(start(party, call, &others(&party.user), token)).await.unwrap();
    }
    for party in &mut net.parties {
        let others = others(&party.user);
        first_frames(party, &others).await;
    }
    users
}

/// Waits until `party` has the first audio and video frame of each of `from`.
async fn first_frames(party: &mut Party, from: &[UserId]) {
    let mut missing: HashSet<(UserId, MediaKind)> =
        from.iter().flat_map(|u| [(u.clone(), MediaKind::Audio), (u.clone(), MediaKind::Video)]).collect();
    let who = party.user.clone();
    timeout(WAIT, async {
        while !missing.is_empty() {
            if let Some(MediaEvent::FirstFrame { user, kind, .. }) = party.events.recv().await {
                missing.remove(&(user, kind));
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{who} still misses first frames: {missing:?}"));
}

/// Waits for `n` more frames of `kind` from each remote user at `party`.
async fn more_frames(party: &mut Party, kind: MediaKind, n: usize) {
    for ((from, k), rx) in &mut party.frames {
        if *k != kind {
            continue;
        }
        timeout(WAIT, async {
            for _ in 0..n {
                rx.recv().await.expect("sink dropped");
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{} got fewer than {n} {kind:?} frames from {from}", party.user));
    }
}

/// Waits for `n` more frames of `kind` from `from` at `party`.
async fn more_frames_from(party: &mut Party, from: &UserId, kind: MediaKind, n: usize) {
    let rx = party.frames.get_mut(&(from.clone(), kind)).unwrap();
    timeout(WAIT, async {
        for _ in 0..n {
            rx.recv().await.expect("sink dropped");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} got fewer than {n} {kind:?} frames from {from}", party.user));
}

/// Tone and picture size per participant.
type Sender = (&'static str, f64, u32, u32);
const SENDERS: [Sender; 3] =
    [("alice", 440.0, 320, 240), ("bob", 660.0, 160, 120), ("carol", 880.0, 240, 176)];
const SIX: [Sender; 6] = [
    ("p1", 440.0, 320, 240),
    ("p2", 550.0, 160, 120),
    ("p3", 660.0, 240, 176),
    ("p4", 770.0, 176, 144),
    ("p5", 880.0, 208, 160),
    ("p6", 990.0, 256, 192),
];

/// Gives `party` its tone and test pattern from `senders`, and file and channel sinks for every
/// other sender.
async fn equip(party: &mut Party, dir: &Path, senders: &[Sender]) {
    let (_, hz, width, height) = senders.iter().find(|s| s.0 == party.user.as_str()).copied().unwrap();
    party
        .adapter
        .switch_microphone(Box::new(ToneSource::new(hz, 0.5, AudioConfig::default()).unwrap()))
        .await
        .unwrap();
    let config = VideoConfig { width, height, fps: 15, ..VideoConfig::default() };
    party.adapter.switch_camera(Box::new(TestPatternSource::new(config).unwrap())).await.unwrap();
    for (other, ..) in senders.iter().filter(|s| s.0 != party.user.as_str()) {
        let other = uid(other);
        let me = &party.user;
        let ivf = IvfSink::create(dir.join(format!("{me}-sees-{other}.ivf"))).unwrap();
        let (count, rx) = ChannelSink::new();
        party.adapter.set_sink(
            other.clone(),
            MediaKind::Video,
            Box::new(TeeSink::new(vec![Box::new(ivf), Box::new(count)])),
        );
        party.frames.insert((other.clone(), MediaKind::Video), rx);
        let ogg = OggOpusSink::create(dir.join(format!("{me}-hears-{other}.ogg"))).unwrap();
        let (count, rx) = ChannelSink::new();
        party.adapter.set_sink(
            other.clone(),
            MediaKind::Audio,
            Box::new(TeeSink::new(vec![Box::new(ogg), Box::new(count)])),
        );
        party.frames.insert((other, MediaKind::Audio), rx);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_participants_see_and_hear_each_other_through_the_sfu() {
    let _turn = ONE_CALL_AT_A_TIME.lock().await;
    let (_tmp, dir) = record_dir();
    let mut net = net(&["alice", "bob", "carol"]);
    let call = CallId::new("group-call").unwrap();
    for party in &mut net.parties {
        equip(party, &dir, &SENDERS).await;
    }
    let users: Vec<UserId> = net.parties.iter().map(|p| p.user.clone()).collect();
    let token = |p: &Party| net.sfu.issue_token(&call, &p.user, &p.device, in_an_hour());

    // Alice and Bob first.
    let started = Instant::now();
    for i in 0..2 {
        let s = start(&net.parties[i], &call, &[users[1 - i].clone()], token(&net.parties[i]));
        net.parties[i].adapter.start(s).await.unwrap();
    }
    first_frames(&mut net.parties[0], &users[1..2]).await;
    first_frames(&mut net.parties[1], &users[0..1]).await;
    eprintln!("alice and bob: start -> both see and hear each other: {:?}", started.elapsed());

    // Carol joins a running call: the SFU offers her the others' streams and offers hers to
    // them; she starts receiving mid-stream, so her first key frames come on request.
    let joined = Instant::now();
    let s = start(&net.parties[2], &call, &users[0..2], token(&net.parties[2]));
    net.parties[2].adapter.start(s).await.unwrap();
    first_frames(&mut net.parties[0], &users[2..3]).await;
    first_frames(&mut net.parties[1], &users[2..3]).await;
    first_frames(&mut net.parties[2], &users[0..2]).await;
    let join_to_media = joined.elapsed();
    eprintln!("carol: join -> everyone sees and hears everyone: {join_to_media:?}");
    // libvpx's own periodic key frame comes every 128 frames (8.5 s at 15 fps): without the
    // forwarded key-frame requests, a late joiner would wait for it.
    assert!(join_to_media < Duration::from_secs(6), "late joiner waited {join_to_media:?} for video");

    // Two seconds of audio and a second of video from everyone at everyone.
    let flowing = Instant::now();
    for party in &mut net.parties {
        more_frames(party, MediaKind::Audio, 100).await;
        more_frames(party, MediaKind::Video, 15).await;
    }
    eprintln!("3 participants: 100 audio and 15 video frames from each at each in {:?}", flowing.elapsed());

    // One connection each, to the SFU.
    for party in &mut net.parties {
        let stats = wait_event(&mut party.events, "stats", |e| matches!(e, MediaEvent::Stats(_))).await;
        let MediaEvent::Stats(stats) = stats else { unreachable!() };
        let peers: Vec<&UserId> = stats.per_peer.iter().map(|p| &p.user).collect();
        assert_eq!(peers, [&sfu_user()], "{}: one connection, to the SFU", party.user);
    }
    let stats = net.sfu.stats().await.unwrap();
    eprintln!("sfu: {stats:?}");
    assert_eq!(
        (stats.calls, stats.participants, stats.published_streams, stats.forwarded_streams),
        (1, 3, 6, 12)
    );
    assert!(
        stats.keyframe_requests_forwarded >= 1,
        "the late joiner's key-frame requests reached the publishers"
    );

    // Alice turns her camera off: her video stops reaching bob and carol (nothing is sent, so
    // nothing is forwarded) while her audio goes on; back on, it resumes with a key frame.
    net.parties[0].adapter.set_camera_enabled(false).await.unwrap();
    for viewer in 1..3 {
        let party = &mut net.parties[viewer];
        let alice = users[0].clone();
        // Flush what was in flight with half a second of alice's audio, then watch a second.
        more_frames_from(party, &alice, MediaKind::Audio, 25).await;
        let video = party.frames.get_mut(&(alice.clone(), MediaKind::Video)).unwrap();
        while video.try_recv().is_ok() {}
        more_frames_from(party, &alice, MediaKind::Audio, 50).await;
        let video = party.frames.get_mut(&(alice.clone(), MediaKind::Video)).unwrap();
        assert!(video.try_recv().is_err(), "{} got alice's video with her camera off", users[viewer]);
    }
    net.parties[0].adapter.set_camera_enabled(true).await.unwrap();
    for viewer in 1..3 {
        let video = net.parties[viewer].frames.get_mut(&(users[0].clone(), MediaKind::Video)).unwrap();
        let first = timeout(WAIT, video.recv()).await.expect("alice's video is back").expect("sink dropped");
        assert!(first.keyframe, "{}: alice's video resumes with a key frame", users[viewer]);
    }

    // Carol leaves: her connection closes, the SFU takes her streams off alice's and bob's
    // connections (a renegotiation each), and those two go on seeing and hearing each other.
    net.parties[2].adapter.stop(&call).await.unwrap();
    assert!(net.sfu.remove_participant(&call, &users[2], &did("dev1")).await.unwrap());
    let stats = net.sfu.stats().await.unwrap();
    assert_eq!((stats.participants, stats.published_streams, stats.forwarded_streams), (2, 4, 4));
    for (i, other) in [(0, &users[1]), (1, &users[0])] {
        more_frames_from(&mut net.parties[i], other, MediaKind::Audio, 100).await;
        more_frames_from(&mut net.parties[i], other, MediaKind::Video, 15).await;
    }

    for party in &net.parties[..2] {
        party.adapter.stop(&call).await.unwrap();
    }
    net.sfu.end_call(&call).await.unwrap();
    assert_eq!(net.sfu.stats().await.unwrap().participants, 0);

    check_recordings(&dir, &SENDERS);
}

/// Every sender's recordings at every other: the sender's picture size in the `.ivf` header, at
/// least 15 frames, and its tone dominant in the last second of the `.ogg`.
fn check_recordings(dir: &Path, senders: &[Sender]) {
    for (me, ..) in senders {
        for (other, hz, width, height) in senders.iter().filter(|s| s.0 != *me).copied() {
            let ivf =
                read_ivf(&dir.join(format!("{me}-sees-{other}.ivf"))).expect("the video recording parses");
            assert_eq!((u32::from(ivf.width), u32::from(ivf.height)), (width, height), "{me} sees {other}");
            assert!(ivf.frames.len() >= 15, "{me} got {} frames of {other}", ivf.frames.len());
            let pcm =
                decode_ogg_opus(&dir.join(format!("{me}-hears-{other}.ogg"))).expect("the audio decodes");
            let found = dominant_frequency(&pcm[pcm.len().saturating_sub(48_000)..]);
            assert!((found - hz).abs() <= 10.0, "{me} hears {other} at {found} Hz, sent {hz} Hz");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_participants_see_and_hear_each_other_through_the_sfu() {
    let _turn = ONE_CALL_AT_A_TIME.lock().await;
    let (_tmp, dir) = record_dir();
    let names: Vec<&str> = SIX.iter().map(|s| s.0).collect();
    let mut net = net(&names);
    let call = CallId::new("six-call").unwrap();
    for party in &mut net.parties {
        equip(party, &dir, &SIX).await;
    }
    let users: Vec<UserId> = net.parties.iter().map(|p| p.user.clone()).collect();
    let started = Instant::now();
    for party in &net.parties {
        let others: Vec<UserId> = users.iter().filter(|u| **u != party.user).cloned().collect();
        let token = net.sfu.issue_token(&call, &party.user, &party.device, in_an_hour());
        party.adapter.start(start(party, &call, &others, token)).await.unwrap();
    }
    for party in &mut net.parties {
        let others: Vec<UserId> = users.iter().filter(|u| **u != party.user).cloned().collect();
        first_frames(party, &others).await;
    }
    eprintln!("6 participants: start -> everyone sees and hears everyone: {:?}", started.elapsed());
    // Two seconds of audio from everyone at everyone, timed; the video frames that arrived
    // meanwhile give the received frame rate per sender at each viewer (sent: 15 fps).
    for party in &mut net.parties {
        for rx in party.frames.values_mut() {
            while rx.try_recv().is_ok() {}
        }
    }
    let measuring = Instant::now();
    for party in &mut net.parties {
        more_frames(party, MediaKind::Audio, 100).await;
    }
    let window = measuring.elapsed().as_secs_f64();
    let mut fps = Vec::new();
    for party in &mut net.parties {
        for ((_, kind), rx) in &mut party.frames {
            if *kind == MediaKind::Video {
                let mut n = 0u32;
                while rx.try_recv().is_ok() {
                    n += 1;
                }
                fps.push(f64::from(n) / window);
            }
        }
    }
    fps.sort_by(f64::total_cmp);
    eprintln!(
        "6 participants: 100 audio frames from each at each in {window:.2} s; received video fps per (viewer, sender): min {:.1}, median {:.1}, max {:.1}",
        fps[0],
        fps[fps.len() / 2],
        fps[fps.len() - 1]
    );
    assert_eq!(fps.len(), 30);
    assert!(fps[0] > 0.0, "a viewer got no video from a sender for {window:.2} s");
    // Enough in every recording for the checks below, however slowly the machine runs.
    for party in &mut net.parties {
        more_frames(party, MediaKind::Video, 15).await;
    }
    for party in &mut net.parties {
        let stats = wait_event(&mut party.events, "stats", |e| matches!(e, MediaEvent::Stats(_))).await;
        let MediaEvent::Stats(stats) = stats else { unreachable!() };
        assert_eq!(stats.per_peer.len(), 1, "{}: one connection, to the SFU", party.user);
    }
    let stats = net.sfu.stats().await.unwrap();
    eprintln!("sfu: {stats:?}");
    assert_eq!((stats.participants, stats.published_streams, stats.forwarded_streams), (6, 12, 60));
    for party in &net.parties {
        party.adapter.stop(&call).await.unwrap();
    }
    net.sfu.end_call(&call).await.unwrap();
    check_recordings(&dir, &SIX);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_without_its_own_token_cannot_connect() {
    let _turn = ONE_CALL_AT_A_TIME.lock().await;
    let mut net = net(&["alice", "mallory", "eve"]);
    let call = CallId::new("guarded-call").unwrap();
    let [alice, mallory, eve] =
        [0, 1, 2].map(|i| (net.parties[i].user.clone(), net.parties[i].device.clone()));
    let alice_token = net.sfu.issue_token(&call, &alice.0, &alice.1, in_an_hour());
    let other_call = CallId::new("another-call").unwrap();
    let eve_elsewhere = net.sfu.issue_token(&other_call, &eve.0, &eve.1, in_an_hour());

    // Mallory replays Alice's token; Eve brings one for another call.
    net.parties[1].adapter.start(start(&net.parties[1], &call, &[], alice_token.clone())).await.unwrap();
    net.parties[2].adapter.start(start(&net.parties[2], &call, &[], eve_elsewhere)).await.unwrap();
    net.parties[0].adapter.start(start(&net.parties[0], &call, &[], alice_token)).await.unwrap();

    let mut refused = HashSet::new();
    let mut alice_ok = false;
    timeout(WAIT, async {
        while !(alice_ok && refused.len() == 2) {
            let (from, result) = net.sfu_results.recv().await.expect("router gone");
            match result {
                Ok(()) if from == alice.0 => alice_ok = true,
                Ok(()) => panic!("the SFU took a signal of {from}"),
                // The offer is refused for its token, the candidates behind it for coming from a
                // device without a connection.
                Err(e) if e.contains("Unauthorized") => {
                    assert!(e.contains("WrongParticipant"), "{from}: {e}");
                    refused.insert(from);
                }
                Err(e) => assert!(e.contains("UnknownParticipant"), "{from}: {e}"),
            }
        }
    })
    .await
    .expect("the SFU judged every offer");
    wait_event(
        &mut net.parties[0].events,
        "alice connected to the SFU",
        |e| matches!(e, MediaEvent::PeerConnected { user, .. } if *user == sfu_user()),
    )
    .await;
    // Neither of the others ever got a word from the SFU (no answer, no ICE credentials), and
    // their candidates are refused too.
    let delivered = net.delivered.lock().unwrap().clone();
    assert!(delivered.get(&alice.0).copied().unwrap_or(0) >= 1);
    assert_eq!(delivered.get(&mallory.0), None);
    assert_eq!(delivered.get(&eve.0), None);
    let stats = net.sfu.stats().await.unwrap();
    assert_eq!(stats.participants, 1, "only alice has a connection");
    for party in &mut net.parties[1..] {
        while let Ok(event) = party.events.try_recv() {
            assert!(!matches!(event, MediaEvent::PeerConnected { .. }), "{}: {event:?}", party.user);
        }
    }
}

/// Video packets the relay drops once per stream, counted in sequence numbers from the first
/// packet it saw of that stream after the loss was switched on.
const DROP_OFFSETS: [u16; 3] = [4, 10, 17];

/// The sums of (recovered, given up, key-frame requests sent) over `party`'s next reports, once
/// `recovered` reaches `want` (or the gaps were given up instead).
async fn repairs_reported(party: &mut Party, want: u32) -> (u32, u32, u32) {
    let mut sum = (0, 0, 0);
    timeout(WAIT, async {
        while sum.0 < want && sum.1 == 0 {
            let (recovered, lost, plis) = next_report(party).await;
            sum = (sum.0 + recovered, sum.1 + lost, sum.2 + plis);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} reported only {sum:?} (recovered, lost, PLIs)", party.user));
    sum
}

/// The next report of `party`: (recovered, given up, key-frame requests sent) in its interval.
async fn next_report(party: &mut Party) -> (u32, u32, u32) {
    let report = wait_event(&mut party.events, "a report", |e| matches!(e, MediaEvent::Stats(_))).await;
    let MediaEvent::Stats(stats) = report else { unreachable!() };
    stats.per_peer.iter().fold((0, 0, 0), |(r, l, p), peer| {
        (r + peer.video_packets_recovered, l + peer.video_packets_lost, p + peer.keyframe_requests_sent)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_between_one_subscriber_and_the_sfu_is_repaired_for_that_subscriber_only() {
    let _turn = ONE_CALL_AT_A_TIME.lock().await;
    // Bob's link from the SFU loses single video packets. Bob's stack asks the SFU for them
    // (NACK), the SFU resends them from what it sent on bob's connection, and bob's reorder buffer
    // puts them back: no key frame is asked for, so the publishers make none, and carol sees
    // nothing of it. This is about NACK, not layers: the publishers send one layer
    // (`WebRtcConfig::simulcast` off), which spares the machine three encoders, so that the
    // repairs are not late for want of CPU.
    let losses = ArmedLosses::new(&DROP_OFFSETS);
    let relay = Arc::new(LossyRelay::start(losses.policy()).await.unwrap());
    let offers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&offers);
    let bobs_link = Arc::clone(&relay);
    let filter: SignalFilter = Arc::new(move |from, to, payload| {
        if let MediaPayload::SdpOffer(sdp) = &payload
            && to.as_str() == "sfu"
        {
            seen.lock().unwrap().push((from.clone(), sdp.clone()));
        }
        // The SFU is told bob lives at the relay; bob only learns the SFU through it.
        match (from.as_str(), to.as_str()) {
            ("bob", _) => bobs_link.from_relayed(payload),
            (_, "bob") => bobs_link.to_relayed(payload),
            _ => Some(payload),
        }
    });
    let (_tmp, dir) = record_dir();
    let one_layer = WebRtcConfig { simulcast: false, ..WebRtcConfig::loopback() };
    let mut net = net_configured(&["alice", "bob", "carol"], filter, one_layer);
    let call = CallId::new("lossy-call").unwrap();
    for party in &mut net.parties {
        equip(party, &dir, &SENDERS).await;
        // Repair is per stream, whatever the layers: one encoder per publisher keeps the
        // machine's load (and so the timing of repairs) that of the losses alone.
        let (_, _, width, height) = SENDERS.iter().find(|s| s.0 == party.user.as_str()).copied().unwrap();
        let config = VideoConfig { width, height, fps: 15, ..VideoConfig::default() };
        let camera = OneLayerCamera(TestPatternSource::new(config).unwrap());
        party.adapter.switch_camera(Box::new(camera)).await.unwrap();
    }
    join_and_see_everyone(&mut net, &call).await;
    // One layer each: no rids, no simulcast in the publishers' offers.
    let offers = offers.lock().unwrap().clone();
    let offerers: HashSet<&UserId> = offers.iter().map(|(from, _)| from).collect();
    assert_eq!(offerers.len(), 3, "everyone offered");
    for (from, offer) in &offers {
        assert!(offer.contains("m=video"), "{from}: {offer}");
        assert!(
            !offer.contains("a=simulcast") && !offer.contains("a=rid:"),
            "{from} offered simulcast:\n{offer}"
        );
    }
    // Wait for a quiet interval at bob (the opening key frames are behind), then lose packets.
    timeout(WAIT, async { while next_report(&mut net.parties[1]).await != (0, 0, 0) {} })
        .await
        .expect("bob's reports settle");
    while next_report(&mut net.parties[2]).await != (0, 0, 0) {}
    let before = net.sfu.stats().await.unwrap();
    losses.arm();

    let want = (DROP_OFFSETS.len() * 2) as u32; // alice's and carol's video
    let (recovered, lost, plis) = repairs_reported(&mut net.parties[1], want).await;
    let after = net.sfu.stats().await.unwrap();
    eprintln!(
        "bob reported {recovered} recovered, {lost} given up, {plis} PLIs; sfu before {before:?}, after {after:?}"
    );
    let losses = losses.losses();
    assert_eq!(losses.len(), 2, "bob receives two video streams");
    for (ssrc, stream) in &losses {
        eprintln!("relay, stream {ssrc}: {stream:?}");
        assert_eq!(stream.dropped, DROP_OFFSETS, "the losses happened");
        for offset in DROP_OFFSETS {
            assert!(stream.resent.contains(&offset), "packet {offset} of {ssrc} was never resent by the SFU");
        }
    }
    assert_eq!((recovered, lost, plis), (want, 0, 0), "bob: every loss repaired, no key frame needed");
    assert_eq!(
        after.keyframe_requests_forwarded, before.keyframe_requests_forwarded,
        "no publisher was asked for a key frame"
    );
    // Carol's link is clean: nothing to repair, nothing asked.
    assert_eq!(next_report(&mut net.parties[2]).await, (0, 0, 0));
    for party in &net.parties {
        party.adapter.stop(&call).await.unwrap();
    }
}

/// A test-pattern camera that logs every key-frame request it gets: `Some(layer)` for one
/// layer, `None` for all of them.
struct LoggedCamera {
    inner: TestPatternSource,
    log: Arc<std::sync::Mutex<Vec<Option<VideoLayer>>>>,
}

#[async_trait::async_trait]
impl MediaSource for LoggedCamera {
    fn kind(&self) -> MediaKind {
        MediaKind::Video
    }

    async fn next_sample(&mut self) -> Option<EncodedSample> {
        self.inner.next_sample().await
    }

    fn apply_video_config(&mut self, config: &VideoConfig) {
        self.inner.apply_video_config(config);
    }

    fn request_keyframe(&mut self) {
        self.log.lock().unwrap().push(None);
        self.inner.request_keyframe();
    }

    fn set_simulcast(&mut self, on: bool) {
        self.inner.set_simulcast(on);
    }

    fn take_tiny_sample(&mut self) -> Option<EncodedSample> {
        self.inner.take_tiny_sample()
    }

    fn request_layer_keyframe(&mut self, layer: VideoLayer) {
        self.log.lock().unwrap().push(Some(layer));
        self.inner.request_layer_keyframe(layer);
    }
}

/// A camera that sends one layer even through the SFU (it ignores `set_simulcast`): for tests
/// about something other than layers, one encoder per publisher instead of two.
struct OneLayerCamera(TestPatternSource);

#[async_trait::async_trait]
impl MediaSource for OneLayerCamera {
    fn kind(&self) -> MediaKind {
        MediaKind::Video
    }

    async fn next_sample(&mut self) -> Option<EncodedSample> {
        self.0.next_sample().await
    }

    fn apply_video_config(&mut self, config: &VideoConfig) {
        self.0.apply_video_config(config);
    }

    fn request_keyframe(&mut self) {
        self.0.request_keyframe();
    }
}

/// The sizes of the key frames among the frames `party` has received from `from` so far, and
/// how many frames that was.
fn received_key_frame_sizes(party: &mut Party, from: &UserId) -> (Vec<(u16, u16)>, usize) {
    let rx = party.frames.get_mut(&(from.clone(), MediaKind::Video)).unwrap();
    let (mut sizes, mut n) = (Vec::new(), 0);
    while let Ok(frame) = rx.try_recv() {
        n += 1;
        if frame.keyframe {
            sizes.push(keyframe_dimensions(&frame.data).expect("a key frame has a size"));
        }
    }
    (sizes, n)
}

/// Waits for the next key frame of `size` from `from` at `party`: the sizes of the other key
/// frames before it, and how many frames came before it.
async fn key_frame_of_size(party: &mut Party, from: &UserId, size: (u16, u16)) -> (Vec<(u16, u16)>, usize) {
    let rx = party.frames.get_mut(&(from.clone(), MediaKind::Video)).unwrap();
    let who = party.user.clone();
    let (mut others, mut before) = (Vec::new(), 0);
    timeout(WAIT, async {
        loop {
            let frame = rx.recv().await.expect("sink dropped");
            if frame.keyframe {
                let got = keyframe_dimensions(&frame.data).expect("a key frame has a size");
                if got == size {
                    return;
                }
                others.push(got);
            }
            before += 1;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{who} got no key frame of {size:?} from {from}, only of {others:?}"));
    (others, before)
}

/// Sums (recovered, given up, key-frame requests sent) over the reports `party` has made so far
/// and the next one.
async fn reports_so_far(party: &mut Party) -> (u32, u32, u32) {
    let mut sum = (0, 0, 0);
    while let Ok(event) = party.events.try_recv() {
        if let MediaEvent::Stats(stats) = event {
            for peer in &stats.per_peer {
                sum.0 += peer.video_packets_recovered;
                sum.1 += peer.video_packets_lost;
                sum.2 += peer.keyframe_requests_sent;
            }
        }
    }
    let next = next_report(party).await;
    (sum.0 + next.0, sum.1 + next.1, sum.2 + next.2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_view_gets_the_low_layer_without_costing_the_others_a_key_frame() {
    let _turn = ONE_CALL_AT_A_TIME.lock().await;
    let (_tmp, dir) = record_dir();
    // Alice's first offer, as the SFU gets it.
    let offers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&offers);
    let filter: SignalFilter = Arc::new(move |from, _, payload| {
        if let MediaPayload::SdpOffer(sdp) = &payload
            && from.as_str() == "alice"
        {
            seen.lock().unwrap().push(sdp.clone());
        }
        Some(payload)
    });
    let mut net = net_with(&["alice", "bob", "carol"], filter);
    let call = CallId::new("simulcast-call").unwrap();
    for party in &mut net.parties {
        equip(party, &dir, &SENDERS).await;
    }
    // Alice's camera (320x240) logs the key frames asked of it, per layer.
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let config = VideoConfig { width: 320, height: 240, fps: 15, ..VideoConfig::default() };
    let camera = LoggedCamera { inner: TestPatternSource::new(config).unwrap(), log: Arc::clone(&log) };
    net.parties[0].adapter.switch_camera(Box::new(camera)).await.unwrap();
    let users = join_and_see_everyone(&mut net, &call).await;
    let alice = users[0].clone();
    // Alice declares her two layers by rid, as a browser does, and opens the control channel.
    let offer = offers.lock().unwrap().first().cloned().expect("alice offered");
    for line in ["a=rid:f send", "a=rid:q send", "a=simulcast:send f;q"] {
        assert!(offer.lines().any(|l| l == line), "no {line:?} in alice's offer:\n{offer}");
    }
    assert!(offer.contains("m=application"), "no data channel in alice's offer:\n{offer}");
    // Both viewers get alice's full layer (their first frame is a key frame).
    for viewer in [1, 2] {
        let (sizes, _) = received_key_frame_sizes(&mut net.parties[viewer], &alice);
        assert!(!sizes.is_empty() && sizes.iter().all(|s| *s == (320, 240)), "{}: {sizes:?}", users[viewer]);
    }
    // Wait until bob's link is quiet (opening key frames behind), so that whatever bob reports
    // from here on is the switches' doing.
    timeout(WAIT, async { while next_report(&mut net.parties[1]).await != (0, 0, 0) {} })
        .await
        .expect("bob's reports settle");
    // Carol's too: a key frame she asked for would be a full-layer request in alice's log.
    timeout(WAIT, async { while next_report(&mut net.parties[2]).await != (0, 0, 0) {} })
        .await
        .expect("carol's reports settle");
    // What bob and carol got so far is not the switches' doing.
    let _ = received_key_frame_sizes(&mut net.parties[1], &alice);
    let _ = received_key_frame_sizes(&mut net.parties[2], &alice);
    let before = net.sfu.stats().await.unwrap();
    log.lock().unwrap().clear();

    // Bob makes alice's view small: the SFU asks alice for a key frame of the tiny layer only,
    // and moves bob to it there. Until then the full layer keeps coming (its own periodic key
    // frames included).
    let asked = Instant::now();
    net.parties[1].adapter.set_video_tiny(&alice, true).await;
    let (full_key_frames, before_switch) = key_frame_of_size(&mut net.parties[1], &alice, (160, 120)).await;
    eprintln!(
        "bob: tiny asked -> first tiny frame: {:?} ({before_switch} full frames between)",
        asked.elapsed()
    );
    assert!(full_key_frames.iter().all(|s| *s == (320, 240)), "bob before the switch: {full_key_frames:?}");
    more_frames_from(&mut net.parties[1], &alice, MediaKind::Video, 15).await;
    let (sizes, _) = received_key_frame_sizes(&mut net.parties[1], &alice);
    assert!(sizes.iter().all(|s| *s == (160, 120)), "bob stays on the tiny layer: {sizes:?}");
    // Carol kept the full layer, and alice's full-layer encoder was never asked for a key frame.
    let (sizes, n) = received_key_frame_sizes(&mut net.parties[2], &alice);
    assert!(n >= 10, "carol kept receiving alice's video ({n} frames)");
    assert!(sizes.iter().all(|s| *s == (320, 240)), "carol: {sizes:?}");
    let asked_of_alice = std::mem::take(&mut *log.lock().unwrap());
    assert!(asked_of_alice.contains(&Some(VideoLayer::Tiny)), "{asked_of_alice:?}");
    assert!(
        asked_of_alice.iter().all(|l| *l == Some(VideoLayer::Tiny)),
        "bob's switch made alice send a full-layer key frame: {asked_of_alice:?}"
    );

    // Back to the full view: the full size returns at the full layer's next key frame.
    net.parties[1].adapter.set_video_tiny(&alice, false).await;
    let (tiny_key_frames, _) = key_frame_of_size(&mut net.parties[1], &alice, (320, 240)).await;
    assert!(
        tiny_key_frames.iter().all(|s| *s == (160, 120)),
        "bob before the switch back: {tiny_key_frames:?}"
    );
    more_frames_from(&mut net.parties[1], &alice, MediaKind::Video, 15).await;
    let asked_of_alice = std::mem::take(&mut *log.lock().unwrap());
    assert!(asked_of_alice.iter().all(|l| *l == Some(VideoLayer::Full)), "{asked_of_alice:?}");
    // Bob got carol at full size all along.
    let (sizes, _) = received_key_frame_sizes(&mut net.parties[1], &users[2]);
    assert!(sizes.iter().all(|s| *s == (240, 176)), "bob sees carol: {sizes:?}");

    // Both switches kept bob's copy one continuous stream: nothing lost, no key frame asked.
    assert_eq!(reports_so_far(&mut net.parties[1]).await, (0, 0, 0), "bob: (recovered, lost, PLIs)");
    let after = net.sfu.stats().await.unwrap();
    eprintln!("sfu before {before:?}, after {after:?}");
    assert_eq!(after.layer_switches - before.layer_switches, 2);
    assert!(after.layer_keyframe_requests > before.layer_keyframe_requests);
    for party in &net.parties {
        party.adapter.stop(&call).await.unwrap();
    }
    net.sfu.end_call(&call).await.unwrap();
}

/// A link that loses a quarter of the video for good, once armed: every fourth new packet of each
/// VP8 stream is dropped, and so is every resend of it, so that no repair can hide the loss.
fn lasting_quarter_loss(armed: Arc<std::sync::atomic::AtomicBool>) -> callplus_media::lossy_relay::DropRtp {
    let mut seen: HashMap<u32, u64> = HashMap::new();
    let mut lost: HashSet<(u32, u16)> = HashSet::new();
    Box::new(move |packet| {
        if !is_video(packet) || !armed.load(std::sync::atomic::Ordering::Relaxed) {
            return false;
        }
        let key = (ssrc(packet), sequence_number(packet));
        if lost.contains(&key) {
            return true;
        }
        let n = seen.entry(key.0).or_default();
        *n += 1;
        if (*n).is_multiple_of(4) {
            lost.insert(key);
            return true;
        }
        false
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_whose_link_loses_the_full_layer_is_held_at_the_tiny_one_alone() {
    let _turn = ONE_CALL_AT_A_TIME.lock().await;
    // Bob's link from the SFU loses a quarter of its video for good (resends too). His reports
    // say so; the SFU holds him at alice's tiny layer, which he never asked for, until his link
    // has been clean for a while. Carol, on a clean link, keeps the full layer.
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let relay = Arc::new(LossyRelay::start(lasting_quarter_loss(Arc::clone(&armed))).await.unwrap());
    let bobs_link = Arc::clone(&relay);
    let filter: SignalFilter = Arc::new(move |from, to, payload| match (from.as_str(), to.as_str()) {
        ("bob", _) => bobs_link.from_relayed(payload),
        (_, "bob") => bobs_link.to_relayed(payload),
        _ => Some(payload),
    });
    let (_tmp, dir) = record_dir();
    let mut net = net_with(&["alice", "bob", "carol"], filter);
    let call = CallId::new("lossy-layers-call").unwrap();
    for party in &mut net.parties {
        equip(party, &dir, &SENDERS).await;
    }
    let config = VideoConfig { width: 320, height: 240, fps: 15, ..VideoConfig::default() };
    net.parties[0].adapter.switch_camera(Box::new(TestPatternSource::new(config).unwrap())).await.unwrap();
    let users = join_and_see_everyone(&mut net, &call).await;
    let alice = users[0].clone();
    for viewer in [1, 2] {
        let (sizes, _) = received_key_frame_sizes(&mut net.parties[viewer], &alice);
        assert!(!sizes.is_empty() && sizes.iter().all(|s| *s == (320, 240)), "{}: {sizes:?}", users[viewer]);
    }
    let before = net.sfu.stats().await.unwrap();
    assert_eq!(before.loss_capped_streams, 0, "clean links: {before:?}");

    armed.store(true, std::sync::atomic::Ordering::Relaxed);
    // The SFU caps bob once two of his reports in a row show the loss.
    let capped = timeout(WAIT, async {
        loop {
            let stats = net.sfu.stats().await.unwrap();
            if stats.loss_capped_streams > 0 {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("bob's loss caps his layer");
    // Only bob's copies (of alice's and carol's video) can be held: carol's link is clean.
    assert!(capped.loss_caps > before.loss_caps && capped.loss_capped_streams <= 2, "{capped:?}");
    // The link heals (a quarter lost for good leaves no frame whole to decode). The cap holds
    // until bob's reports have been clean for a while: his next key frames are the tiny size.
    armed.store(false, std::sync::atomic::Ordering::Relaxed);
    drain_frames(&mut net.parties[1]);
    let (sizes, frames_before) = key_frame_of_size(&mut net.parties[1], &alice, (160, 120)).await;
    eprintln!("bob: {sizes:?} then alice's tiny layer after {frames_before} frames; sfu {capped:?}");
    // Clean for long enough, he gets the full layer back, as he never asked for less.
    let (sizes, frames_before) = key_frame_of_size(&mut net.parties[1], &alice, (320, 240)).await;
    eprintln!("bob: {sizes:?} then alice's full layer again after {frames_before} frames");
    let after = net.sfu.stats().await.unwrap();
    assert_eq!(after.loss_capped_streams, 0, "the caps are lifted: {after:?}");
    // Carol keeps receiving alice's full layer: whatever key frames reach her are full size.
    let rx = net.parties[2].frames.get_mut(&(alice.clone(), MediaKind::Video)).unwrap();
    let mut sizes = Vec::new();
    timeout(WAIT, async {
        for _ in 0..15 {
            let frame = rx.recv().await.expect("sink dropped");
            if frame.keyframe {
                sizes.push(keyframe_dimensions(&frame.data).expect("a key frame has a size"));
            }
        }
    })
    .await
    .expect("carol keeps receiving alice's video");
    assert!(sizes.iter().all(|s| *s == (320, 240)), "carol: {sizes:?}");
    for party in &net.parties {
        party.adapter.stop(&call).await.unwrap();
    }
    net.sfu.end_call(&call).await.unwrap();
}

/// Waits at `party` for the active speaker to be `speaker`; the audio levels (0–100) reported
/// per user up to then, the last one of each. A publisher of `publishers` (other than `party`)
/// with no level by then gets its first one after: the speaker and the levels come in events
/// of their own, and the one that announces the speaker can overtake a quiet publisher's first
/// level.
async fn speaker_and_levels(
    party: &mut Party,
    speaker: &UserId,
    publishers: &[UserId],
) -> HashMap<UserId, u8> {
    let mut levels = HashMap::new();
    let who = party.user.clone();
    let missing =
        |levels: &HashMap<UserId, u8>| publishers.iter().any(|p| *p != who && !levels.contains_key(p));
    timeout(WAIT, async {
        loop {
            match party.events.recv().await.expect("adapter gone") {
                // Its own level comes from its source, not the SFU.
                MediaEvent::AudioLevel { user, level, .. } if user != who => {
                    levels.insert(user, level);
                }
                MediaEvent::ActiveSpeaker { user: Some(user), .. } if user == *speaker => break,
                _ => {}
            }
        }
        while missing(&levels) {
            if let MediaEvent::AudioLevel { user, level, .. } = party.events.recv().await.expect("adapter gone")
                && user != who
            {
                levels.entry(user).or_insert(level);
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{who} was never told {speaker} speaks with a level from each of {publishers:?}; levels {levels:?}"));
    levels
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loud_participant_is_the_active_speaker_for_everyone_with_levels_from_the_sfu() {
    let _turn = ONE_CALL_AT_A_TIME.lock().await;
    let mut net = net(&["alice", "bob", "carol"]);
    let call = CallId::new("speaker-call").unwrap();
    let users: Vec<UserId> = net.parties.iter().map(|p| p.user.clone()).collect();
    // Alice at half scale, bob barely audible, carol silent; no cameras.
    for (party, amplitude) in net.parties.iter().zip([0.5, 0.02, 0.0]) {
        let tone = ToneSource::new(440.0, amplitude, AudioConfig::default()).unwrap();
        party.adapter.switch_microphone(Box::new(tone)).await.unwrap();
    }
    for i in 0..3 {
        let others: Vec<UserId> = users.iter().filter(|u| **u != users[i]).cloned().collect();
        let token = net.sfu.issue_token(&call, &users[i], &did("dev1"), in_an_hour());
        let s = start(&net.parties[i], &call, &others, token);
        net.parties[i].adapter.start(s).await.unwrap();
    }
    for i in 0..3 {
        let party = &mut net.parties[i];
        let levels = speaker_and_levels(party, &users[0], &users).await;
        eprintln!("{}: alice speaks; levels {levels:?}", party.user);
        let others: HashSet<&UserId> = levels.keys().collect();
        let want: HashSet<&UserId> = users.iter().filter(|u| **u != party.user).collect();
        assert_eq!(others, want, "{}: a level for every other publisher", party.user);
        if i != 0 {
            // A half-scale sine is 50; RFC 6464 carries whole dB (±6 %).
            let alice = levels[&users[0]];
            assert!((45..=55).contains(&alice), "{}: alice's level {alice}", party.user);
        }
        if i != 2 {
            assert_eq!(levels[&users[2]], 0, "{}: carol is silent", party.user);
        }
        if i != 1 {
            assert!(levels[&users[1]] <= 3, "{}: bob is barely audible: {}", party.user, levels[&users[1]]);
        }
    }

    // Alice's microphone goes off and bob speaks up: bob takes over at the others.
    net.parties[0].adapter.set_microphone_enabled(false).await.unwrap();
    net.sfu.set_paused(&call, &users[0], &did("dev1"), MediaKind::Audio, true).await.unwrap();
    let loud = ToneSource::new(660.0, 0.8, AudioConfig::default()).unwrap();
    net.parties[1].adapter.switch_microphone(Box::new(loud)).await.unwrap();
    for i in [0, 2] {
        let party = &mut net.parties[i];
        let levels = speaker_and_levels(party, &users[1], &users[..2]).await;
        eprintln!("{}: bob speaks; levels {levels:?}", party.user);
        assert!(levels.get(&users[1]).is_some_and(|l| (75..=85).contains(l)), "{}: {levels:?}", party.user);
        if i == 2 {
            assert_eq!(levels.get(&users[0]), Some(&0), "carol: alice's paused microphone is silent");
        }
    }

    for party in &net.parties {
        party.adapter.stop(&call).await.unwrap();
    }
    net.sfu.end_call(&call).await.unwrap();
}

/// Logs to the test's output, filtered by `RUST_LOG` (nothing without it).
fn logs() {
    let filter = tracing_subscriber::EnvFilter::from_default_env();
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

/// Drops whatever `party` has received so far from every remote user.
fn drain_frames(party: &mut Party) {
    for rx in party.frames.values_mut() {
        while rx.try_recv().is_ok() {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_who_leaves_and_rejoins_is_seen_and_heard_again() {
    logs();
    let _turn = ONE_CALL_AT_A_TIME.lock().await;
    let (_tmp, dir) = record_dir();
    let mut net = net(&["alice", "bob", "carol"]);
    let call = CallId::new("rejoin-call").unwrap();
    for party in &mut net.parties {
        equip(party, &dir, &SENDERS).await;
    }
    let users: Vec<UserId> = net.parties.iter().map(|p| p.user.clone()).collect();
    let others = |i: usize| -> Vec<UserId> { users.iter().filter(|u| **u != users[i]).cloned().collect() };
    for (i, party) in net.parties.iter().enumerate() {
        let token = net.sfu.issue_token(&call, &party.user, &party.device, in_an_hour());
        party.adapter.start(start(party, &call, &others(i), token)).await.unwrap();
    }
    for (i, party) in net.parties.iter_mut().enumerate() {
        first_frames(party, &others(i)).await;
    }

    // Carol leaves, twice in a row comes back on a new connection of the same adapter: each time
    // alice and bob (whose connections stay up, renegotiated) decode her video and hear her
    // again, and she them.
    for round in 1..=2 {
        net.parties[2].adapter.stop(&call).await.unwrap();
        assert!(net.sfu.remove_participant(&call, &users[2], &did("dev1")).await.unwrap());
        for (i, other) in [(0, &users[1]), (1, &users[0])] {
            more_frames_from(&mut net.parties[i], other, MediaKind::Video, 5).await;
        }
        for party in &mut net.parties {
            drain_frames(party);
        }
        let rejoined = Instant::now();
        let token = net.sfu.issue_token(&call, &users[2], &did("dev1"), in_an_hour());
        net.parties[2].adapter.start(start(&net.parties[2], &call, &others(2), token)).await.unwrap();
        first_frames(&mut net.parties[2], &others(2)).await;
        for i in 0..2 {
            let carol = users[2].clone();
            more_frames_from(&mut net.parties[i], &carol, MediaKind::Audio, 25).await;
            let video = net.parties[i].frames.get_mut(&(carol.clone(), MediaKind::Video)).unwrap();
            // Her first frame on the renegotiated connection is a key frame of her picture.
            let first = timeout(WAIT, async {
                loop {
                    let frame = video.recv().await.expect("sink dropped");
                    if frame.keyframe {
                        return frame;
                    }
                }
            })
            .await
            .unwrap_or_else(|_| panic!("round {round}: {} never decoded carol's video again", users[i]));
            assert_eq!(keyframe_dimensions(&first.data), Some((240, 176)), "round {round}: carol's picture");
            more_frames_from(&mut net.parties[i], &carol, MediaKind::Video, 10).await;
        }
        eprintln!("round {round}: carol rejoined -> seen and heard by everyone: {:?}", rejoined.elapsed());
        let stats = net.sfu.stats().await.unwrap();
        assert_eq!((stats.participants, stats.published_streams, stats.forwarded_streams), (3, 6, 12));
    }

    for party in &net.parties {
        party.adapter.stop(&call).await.unwrap();
    }
    net.sfu.end_call(&call).await.unwrap();
}
