//! A browser and a Rust client in one call, both ways: headless Chromium running the Web SDK
//! (`callplus-web/browser-tests/interop.mjs`, driven by node and playwright-core) and a Rust
//! client with `callplus-media`, through a real server on 127.0.0.1.
//!
//! The page must show the Rust side's VP8 video and hear its Opus tone; the Rust side records
//! what the browser sends (Chromium's fake microphone plays a WAV tone written here) and must
//! find that tone in the `.ogg` and VP8 frames in the `.ivf`. The two calls swap who calls and
//! who sends the SDP offer (the glare rule orders `(user, device)`: `rust` < `web`, `a-web` <
//! `rust`). A third call is a group (MULTI) call, whose media both sides send through the server's
//! SFU: each has one peer connection, to the SFU.
//!
//! Ignored by plain `cargo test`: it needs Chromium, node and playwright-core, and must run in
//! a network namespace with only a loopback interface (browsers gather candidates on every
//! interface). `cargo xtask ci` installs them and runs it with `--ignored` inside
//! `unshare -n`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use callplus_media::inspect::{decode_ogg_opus, dominant_frequency, read_ivf};
use callplus_media::{
    AudioConfig, ChannelSink, MediaEvent, MediaKind, MediaSink, MediaSource, RemoteFrame, TeeSink,
    ToneSource, VideoConfig,
};
use callplus_session::CallType;
use callplus_signal::client::{MediaOptions, record_sink};
use callplus_tests::{ClientOptions, Event, MediaType, TestServer, config, connected, ended, record_of};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::time::timeout;

/// Generous: Chromium, two VP8 encoders and the server share two cores.
const WAIT: Duration = Duration::from_secs(40);
/// What the Rust client sends.
const RUST_TONE_HZ: f64 = 660.0;
/// What the browser's fake microphone plays.
const BROWSER_TONE_HZ: f64 = 880.0;

type Receivers = Arc<Mutex<HashMap<(String, MediaKind), UnboundedReceiver<RemoteFrame>>>>;

/// A mono 16-bit 48 kHz WAV of `seconds` of a half-scale `hz` sine.
fn write_tone_wav(path: &Path, hz: f64, seconds: u32) {
    let rate = 48_000u32;
    let samples: Vec<u8> = (0..rate * seconds)
        .flat_map(|i| {
            let v = (f64::from(i) * hz * std::f64::consts::TAU / f64::from(rate)).sin() * 0.5;
            ((v * f64::from(i16::MAX)) as i16).to_le_bytes()
        })
        .collect();
    let mut wav = Vec::with_capacity(44 + samples.len());
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + samples.len() as u32).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&rate.to_le_bytes());
    wav.extend_from_slice(&(rate * 2).to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&(samples.len() as u32).to_le_bytes());
    wav.extend_from_slice(&samples);
    std::fs::write(path, wav).unwrap();
}

/// The browser half: node running `interop.mjs`, its stdout lines forwarded by a thread.
struct Page {
    child: Child,
    lines: UnboundedReceiver<String>,
}

impl Drop for Page {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Page {
    /// `sfu`: the call's media goes through the server's SFU (the page checks its connection).
    fn start(server: &TestServer, user: &str, role: &str, sfu: bool, wav: &Path) -> Page {
        let tone = RUST_TONE_HZ.to_string();
        Page::spawn(
            "interop.mjs",
            server,
            &[
                ("CALLPLUS_TOKEN", server.token(user).as_str()),
                ("CALLPLUS_USER", user),
                ("CALLPLUS_PEER", "rust"),
                ("CALLPLUS_ROLE", role),
                ("CALLPLUS_PEER_TONE_HZ", tone.as_str()),
                ("CALLPLUS_FAKE_AUDIO", wav.to_str().unwrap()),
                ("CALLPLUS_SFU", if sfu { "1" } else { "0" }),
            ],
        )
    }

    /// node running `script` of `callplus-web/browser-tests` against `server`, with `vars`.
    fn spawn(script: &str, server: &TestServer, vars: &[(&str, &str)]) -> Page {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../callplus-web/browser-tests");
        let mut child = Command::new("node")
            .arg(script)
            .current_dir(&dir)
            .env("CALLPLUS_URL", format!("http://{}/", server.addr()))
            .envs(vars.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node runs (cargo xtask ci installs it)");
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = unbounded_channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Page { child, lines }
    }

    /// Waits for the page to print `@what`, echoing its other lines.
    async fn reached(&mut self, what: &str) {
        let marker = format!("@{what}");
        timeout(WAIT, async {
            loop {
                match self.lines.recv().await {
                    Some(line) if line == marker => return,
                    Some(line) => println!("{line}"),
                    None => panic!("the page ended before {marker}"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the page did not reach {marker} in time"));
    }

    /// Waits for node to exit (its stdout closes) and asserts that every check passed.
    async fn succeeded(mut self) {
        timeout(WAIT, async {
            while let Some(line) = self.lines.recv().await {
                println!("{line}");
            }
        })
        .await
        .expect("the page exits after the call");
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the page's checks failed ({status})");
    }
}

async fn frames(rx: &mut UnboundedReceiver<RemoteFrame>, n: usize, what: &str) {
    timeout(WAIT, async {
        for _ in 0..n {
            rx.recv().await.unwrap_or_else(|| panic!("sink dropped while waiting for {what}"));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {n} frames of {what}"));
}

/// Waits until the client dropped the sink: its recording is complete.
async fn sink_closed(rx: &mut UnboundedReceiver<RemoteFrame>, what: &str) {
    timeout(WAIT, async { while rx.recv().await.is_some() {} })
        .await
        .unwrap_or_else(|_| panic!("{what}: the sink still receives after the call ended"));
}

async fn take_sink(frames: &Receivers, from: &str, kind: MediaKind) -> UnboundedReceiver<RemoteFrame> {
    timeout(WAIT, async {
        loop {
            if let Some(rx) = frames.lock().unwrap().remove(&(from.to_owned(), kind)) {
                return rx;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {kind:?} sink for {from}: media never started"))
}

/// Who makes the call: the browser (1:1), the Rust client (1:1), or the Rust client, as a group
/// call through the SFU.
#[derive(Clone, Copy, PartialEq)]
enum Caller {
    Browser,
    Rust,
    RustGroup,
}

async fn one_call(server: &TestServer, web_user: &str, caller: Caller, root: &Path, wav: &Path) {
    let dir = root.join(web_user);
    std::fs::create_dir_all(&dir).unwrap();
    let sinks: Receivers = Arc::default();
    let (sink_dir, sink_frames) = (dir.clone(), Arc::clone(&sinks));
    let video = VideoConfig { width: 320, height: 240, fps: 15, ..VideoConfig::default() };
    let media = MediaOptions::loopback().with_tone(RUST_TONE_HZ).with_test_pattern(video).with_sinks(
        move |user, kind| {
            let (channel, rx) = ChannelSink::new();
            sink_frames.lock().unwrap().insert((user.to_string(), kind), rx);
            let file = record_sink(&sink_dir, user, kind).expect("the recording is created");
            Some(Box::new(TeeSink::new(vec![file, Box::new(channel)])) as Box<dyn MediaSink>)
        },
    );
    let mut rust = server.user_with("rust", ClientOptions::default().with_media(media)).await;
    let mut media_events = rust.client.media_events().expect("the client has media");
    let role = if caller == Caller::Browser { "caller" } else { "callee" };
    let mut page = Page::start(server, web_user, role, caller == Caller::RustGroup, wav);
    page.reached("ready").await;

    let call = match caller {
        Caller::Browser => {
            let event = rust.expect(|e| matches!(e, Event::ReceivedCall { .. }), "the browser's call").await;
            let Event::ReceivedCall { session, .. } = event else { unreachable!() };
            let call = session.call_id().clone();
            rust.client.accept(&call).await.unwrap();
            call
        }
        Caller::Rust => rust.call(web_user, MediaType::AudioVideo).await,
        Caller::RustGroup => rust
            .client
            .start_call(&[web_user], CallType::Multi, MediaType::AudioVideo, Default::default())
            .await
            .unwrap()
            .call_id()
            .clone(),
    };
    rust.expect(connected(&call), "connected").await;

    let mut audio = take_sink(&sinks, web_user, MediaKind::Audio).await;
    let mut video = take_sink(&sinks, web_user, MediaKind::Video).await;
    frames(&mut audio, 150, "the browser's audio").await;
    frames(&mut video, 20, "the browser's video").await;
    page.reached("checked").await;
    // The Rust client's own connections: the browser's device (peer to peer), or the SFU alone.
    let expected = if caller == Caller::RustGroup {
        (callplus_signal::server::SFU_USER.to_owned(), callplus_signal::server::SFU_DEVICE.to_owned())
    } else {
        (web_user.to_owned(), String::new())
    };
    timeout(WAIT, async {
        loop {
            let stats = match media_events.next().await {
                Some(MediaEvent::Stats(stats)) => stats,
                Some(_) => continue,
                None => panic!("the Rust client's media events ended"),
            };
            let peers: Vec<(String, String)> = stats
                .per_peer
                .iter()
                .map(|s| {
                    (
                        s.user.to_string(),
                        if caller == Caller::RustGroup { s.device.to_string() } else { String::new() },
                    )
                })
                .collect();
            if peers == [expected.clone()] {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the Rust client reports no single connection to {expected:?}"));

    rust.client.hangup(Some(&call)).await.unwrap();
    rust.expect(ended(&call), "the call ends").await;
    rust.expect(record_of(&call), "the record").await;
    sink_closed(&mut audio, "audio").await;
    sink_closed(&mut video, "video").await;
    page.succeeded().await;

    let ogg = dir.join(format!("{web_user}.ogg"));
    let pcm = decode_ogg_opus(&ogg).expect("the browser's audio decodes");
    assert!(pcm.len() >= 48_000 * 2, "{} holds only {} samples", ogg.display(), pcm.len());
    let found = dominant_frequency(&pcm[pcm.len() - 48_000..]);
    assert!(
        (found - BROWSER_TONE_HZ).abs() <= 10.0,
        "browser sent {BROWSER_TONE_HZ} Hz, the recording holds {found} Hz"
    );
    let ivf = read_ivf(&dir.join(format!("{web_user}.ivf"))).expect("the browser's video parses");
    assert_eq!(&ivf.fourcc, b"VP80");
    assert!(
        ivf.frames.len() >= 20 && ivf.width > 0 && ivf.height > 0,
        "{} frames of {}x{}",
        ivf.frames.len(),
        ivf.width,
        ivf.height
    );
    println!(
        "{web_user} -> rust: {found:.1} Hz in {} s of audio, {} VP8 frames of {}x{}",
        pcm.len() / 48_000,
        ivf.frames.len(),
        ivf.width,
        ivf.height
    );
    rust.client.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium, node and playwright-core in a loopback-only network namespace: cargo xtask ci runs it"]
async fn browser_and_rust_client_exchange_opus_and_vp8_both_ways() {
    let tmp = tempfile::tempdir().unwrap();
    let root: PathBuf = tmp.path().to_owned();
    let wav = root.join("tone.wav");
    write_tone_wav(&wav, BROWSER_TONE_HZ, 10);
    let server = TestServer::start(config()).await;
    // The browser calls; the Rust client offers (rust < web).
    one_call(&server, "web", Caller::Browser, &root, &wav).await;
    // The Rust client calls; the browser offers (a-web < rust).
    one_call(&server, "a-web", Caller::Rust, &root, &wav).await;
    // A group call: both sides offer to the SFU.
    one_call(&server, "g-web", Caller::RustGroup, &root, &wav).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium, node and playwright-core in a loopback-only network namespace: cargo xtask ci runs it"]
async fn a_tab_stops_ringing_when_the_same_users_rust_client_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let wav = tmp.path().join("tone.wav");
    write_tone_wav(&wav, BROWSER_TONE_HZ, 2);
    let server = TestServer::start(config()).await;
    let mut phone = server.device("web", "web-phone").await;
    let mut page = Page::start(&server, "web", "other-device", false, &wav);
    page.reached("ready").await;

    let mut caller = server.user("caller").await;
    let call = caller.call("web", MediaType::AudioVideo).await;
    page.reached("ringing").await;
    phone.answer(&call).await;
    caller.expect(connected(&call), "connected to the Rust device").await;
    page.reached("done").await;
    page.succeeded().await;

    caller.client.hangup(Some(&call)).await.unwrap();
    phone.expect(ended(&call), "the call ends").await;
    server.shutdown().await;
}

/// Audio levels and the active speaker through the SFU reach pages (`browser-tests/levels.mjs`):
/// a group call of a Rust client sending a quiet tone (0.1 of full scale: level 10) and two
/// pages whose microphones are tones the page script turns up and down. The pages check their
/// `onUserAudioLevelChanged` levels for all three (their own included) and
/// `onActiveSpeakerChanged`: the loud page A, then, once A is silent and B loud, B. The Rust
/// client is told the same speakers in the same order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium, node and playwright-core in a loopback-only network namespace: cargo xtask ci runs it"]
async fn pages_get_audio_levels_and_the_active_speaker_from_the_sfu() {
    let server = TestServer::start(config()).await;
    let media = MediaOptions::loopback().with_microphone(|| {
        Ok(Box::new(ToneSource::new(RUST_TONE_HZ, 0.1, AudioConfig::default())?) as Box<dyn MediaSource>)
    });
    let mut rust = server.user_with("rust", ClientOptions::default().with_media(media)).await;
    let mut media_events = rust.client.media_events().expect("the client has media");
    let (a, b) = ("lv-ann", "lv-ben");
    let mut page = Page::spawn(
        "levels.mjs",
        &server,
        &[
            ("CALLPLUS_USER_A", a),
            ("CALLPLUS_TOKEN_A", server.token(a).as_str()),
            ("CALLPLUS_USER_B", b),
            ("CALLPLUS_TOKEN_B", server.token(b).as_str()),
            ("CALLPLUS_PEER", "rust"),
            ("CALLPLUS_PEER_LEVEL", "10"),
        ],
    );
    page.reached("ready").await;
    let call = rust
        .client
        .start_call(&[a, b], CallType::Multi, MediaType::Audio, Default::default())
        .await
        .unwrap()
        .call_id()
        .clone();

    let mut speakers = Vec::new();
    timeout(2 * WAIT, async {
        while speakers.last().map(String::as_str) != Some(b) {
            match media_events.next().await {
                Some(MediaEvent::ActiveSpeaker { call_id, user: Some(user) }) if call_id == call => {
                    speakers.push(user.to_string());
                }
                Some(_) => {}
                None => panic!("the Rust client's media events ended"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the Rust client was not told {b} speaks; speakers so far: {speakers:?}"));
    assert!(speakers.iter().position(|s| s == a).is_some(), "{a} spoke first: {speakers:?}");
    page.reached("checked").await;
    page.reached("done").await;
    page.succeeded().await;
    rust.expect(ended(&call), "the call ends as both pages hung up").await;
    server.shutdown().await;
}
