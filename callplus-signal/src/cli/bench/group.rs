//! Group calls (`--group N`): N media bots in one MULTI call through the server's SFU.
//!
//! Each bot is a real [`Client`] with media (the `callplus-media` WebRTC adapter on 127.0.0.1)
//! sending a sine tone and, with `--video`, a small VP8 test pattern; its sinks only count the
//! frames that arrive per sender and kind. The first bot starts the call, the others accept as
//! their invitation arrives; the clients negotiate with the SFU by themselves. Once every bot
//! receives every other bot's media (or the join timeout ran out), the counters run for
//! `--duration`: received frames per second per (receiver, sender), the receivers' loss reports,
//! and the server process's CPU and memory over the same window.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use callplus_media::{
    AudioConfig, EncodedSample, MediaEvent, MediaKind, MediaSink, MediaSource, RemoteFrame,
    TestPatternSource, ToneSource, VideoConfig, VideoLayer,
};
use callplus_session::client::CallOptions;
use callplus_session::{CallType, MediaType};
use rand::Rng as _;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, timeout};

use super::BenchArgs;
use super::report::{Latency, Reasons, Report, machine, reasons_line, round3};
use super::target::{ProcStats, Target, proc_stats};
use crate::client::{Client, ClientOptions, Event, EventStream, MediaEventStream, MediaOptions};

/// Opus frames the tone source sends per second (20 ms frames).
const AUDIO_FPS: f64 = 50.0;
/// After the last first frame, before measuring: the opening key frames and the encoders'
/// start-up are behind.
const SETTLE: Duration = Duration::from_secs(2);
/// How long bots get to hang up and say Goodbye at the end.
const DISCONNECT: Duration = Duration::from_secs(10);
/// A participant is healthy when it receives at least this share of the sent frame rate from
/// every other participant.
const HEALTHY: f64 = 0.9;

/// Received-frame counters of one bot, per sender and kind, shared with its sinks.
type Counts = Arc<Mutex<HashMap<(String, MediaKind), Arc<AtomicU64>>>>;

/// A sink that counts frames (the bots decode nothing).
struct CountingSink(Arc<AtomicU64>);

impl MediaSink for CountingSink {
    fn on_frame(&mut self, _frame: &RemoteFrame) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Samples a bot's sources produced (and its adapter sent to the SFU), per user and kind.
type Sent = HashMap<(String, MediaKind), Arc<AtomicU64>>;

/// A source that counts the samples it hands out: what a bot really sends, which falls behind
/// the nominal rate when the bots' own process is short of CPU. Everything else (configs, key
/// frames, simulcast's tiny layer) goes to the real source; tiny-layer samples are not counted.
struct CountingSource {
    inner: Box<dyn MediaSource>,
    sent: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl MediaSource for CountingSource {
    fn kind(&self) -> MediaKind {
        self.inner.kind()
    }

    async fn next_sample(&mut self) -> Option<EncodedSample> {
        let sample = self.inner.next_sample().await;
        if sample.is_some() {
            self.sent.fetch_add(1, Ordering::Relaxed);
        }
        sample
    }

    fn apply_video_config(&mut self, config: &VideoConfig) {
        self.inner.apply_video_config(config);
    }

    fn apply_audio_config(&mut self, config: &AudioConfig) {
        self.inner.apply_audio_config(config);
    }

    fn request_keyframe(&mut self) {
        self.inner.request_keyframe();
    }

    fn set_simulcast(&mut self, on: bool) {
        self.inner.set_simulcast(on);
    }

    fn take_tiny_sample(&mut self) -> Option<EncodedSample> {
        self.inner.take_tiny_sample()
    }

    fn request_layer_keyframe(&mut self, layer: VideoLayer) {
        self.inner.request_layer_keyframe(layer);
    }
}

/// One media bot.
struct Bot {
    user: String,
    client: Client,
    events: EventStream,
    media: MediaEventStream,
}

/// What the bots tell the coordinator while the call runs.
#[derive(Default)]
struct Shared {
    /// Wall-clock ms at which each bot joined (started the call, or accepted it).
    joined_ms: Mutex<HashMap<String, i64>>,
    /// (receiver, sender, kind, wall-clock ms) of every first frame.
    first_frames: Mutex<Vec<(String, String, MediaKind, i64)>>,
    /// First frames of the kind the call is judged by (video with `--video`, else audio).
    firsts: AtomicUsize,
    /// Status reports are being summed.
    measuring: AtomicBool,
    failed: Mutex<Reasons>,
}

impl Shared {
    fn fail(&self, why: String) {
        *self.failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).entry(why).or_default() += 1;
    }
}

/// A bot's receive-side reports over the measurement window.
#[derive(Default, Clone, Copy)]
struct Reports {
    count: u32,
    loss_pct_sum: f64,
    video_packets_lost: u64,
    video_packets_recovered: u64,
    keyframe_requests_sent: u64,
}

/// What the bench measures, fixed at the start.
#[derive(Clone, Copy)]
struct Plan {
    media_type: MediaType,
    /// The kind first frames and the health check are judged by.
    judged: MediaKind,
    join_timeout: Duration,
}

/// `STEP:CODE` for a refused request.
fn code(step: &str, e: &callplus_session::Error) -> String {
    let name = e.code.to_proto().as_str_name();
    format!("{step}:{}", name.strip_prefix("RESULT_CODE_").unwrap_or(name))
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0))
}

/// Runs `--group N` and reports.
pub(crate) async fn run(args: &BenchArgs, target: &Target, n: usize) -> anyhow::Result<Report> {
    if n < 2 {
        bail!("--group must be at least 2");
    }
    let (width, height) = args.video_size;
    let video = args.video.then_some(VideoConfig { width, height, fps: args.fps, ..VideoConfig::default() });
    let plan = Plan {
        media_type: if video.is_some() { MediaType::AudioVideo } else { MediaType::Audio },
        judged: if video.is_some() { MediaKind::Video } else { MediaKind::Audio },
        join_timeout: args.join_timeout,
    };
    let tag: String = rand::rng().sample_iter(rand::distr::Alphanumeric).take(6).map(char::from).collect();
    let began = Instant::now();
    let (bots, counts, sent) = connect_bots(args, target, &format!("group-{tag}"), n, video).await?;
    eprintln!("bench: {n} media bots connected in {:.2} s", began.elapsed().as_secs_f64());
    let server_before_call = target.stats();

    let shared = Arc::new(Shared::default());
    let (stop_tx, stop) = watch::channel(false);
    let users: Vec<String> = bots.iter().map(|b| b.user.clone()).collect();
    let mut set = JoinSet::new();
    let mut bots = bots.into_iter();
    let creator = bots.next();
    for bot in bots {
        set.spawn(run_bot(bot, None, plan, Arc::clone(&shared), stop.clone()));
    }
    if let Some(bot) = creator {
        let callees = users[1..].to_vec();
        set.spawn(run_bot(bot, Some(callees), plan, Arc::clone(&shared), stop.clone()));
    }

    // Everyone receives everyone (of the judged kind), or the join timeout runs out.
    let pairs = n * (n - 1);
    let join_started = Instant::now();
    let deadline = join_started + plan.join_timeout;
    let mut last_line = Instant::now();
    while shared.firsts.load(Ordering::Relaxed) < pairs && Instant::now() < deadline {
        if !shared.failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_empty() {
            break; // a bot gave up: its reason is reported
        }
        sleep(Duration::from_millis(50)).await;
        if last_line.elapsed() >= Duration::from_secs(1) {
            last_line = Instant::now();
            eprintln!(
                "bench: joining {:>4.0} s  first {:?} frames {}/{pairs}",
                join_started.elapsed().as_secs_f64(),
                plan.judged,
                shared.firsts.load(Ordering::Relaxed)
            );
        }
    }
    let all_joined = shared.firsts.load(Ordering::Relaxed) >= pairs;
    if all_joined {
        eprintln!("bench: everyone receives everyone after {:.2} s", join_started.elapsed().as_secs_f64());
        sleep(SETTLE).await;
    } else {
        eprintln!("bench: not everyone receives everyone; measuring what arrives");
    }

    // The measurement window.
    let before = snapshot(&counts);
    let sent_before = sent_now(&sent);
    let (server0, self0) = (target.stats(), proc_stats("self"));
    shared.measuring.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    let end = t0 + args.duration;
    let mut last = (t0, before.values().sum::<u64>(), server0.map(|s| s.cpu_s));
    while Instant::now() < end {
        sleep(Duration::from_secs(1).min(end.saturating_duration_since(Instant::now()))).await;
        let now = Instant::now();
        let frames: u64 = snapshot(&counts).values().sum();
        let stats = target.stats();
        let secs = now.duration_since(last.0).as_secs_f64().max(1e-3);
        let cpu = match (stats, last.2) {
            (Some(s), Some(c)) => format!("  server CPU {:.0}%", (s.cpu_s - c) / secs * 100.0),
            _ => String::new(),
        };
        #[allow(clippy::cast_precision_loss)]
        let rate = (frames - last.1) as f64 / secs;
        eprintln!("bench: {:>4.0} s  frames received {rate:.0}/s{cpu}", now.duration_since(t0).as_secs_f64());
        last = (now, frames, stats.map(|s| s.cpu_s));
    }
    shared.measuring.store(false, Ordering::Relaxed);
    let window = t0.elapsed().as_secs_f64();
    let after = snapshot(&counts);
    let sent_after = sent_now(&sent);
    let (server1, self1) = (target.stats(), proc_stats("self"));

    let _ = stop_tx.send(true);
    let mut results = Vec::with_capacity(n);
    while let Some(joined) = set.join_next().await {
        results.push(joined?);
    }
    let reports: HashMap<String, Reports> = results.iter().map(|(b, r)| (b.user.clone(), *r)).collect();
    let mut set = JoinSet::new();
    for (bot, _) in results {
        set.spawn(async move {
            let _ = bot.client.hangup(None).await;
            bot.client.disconnect().await;
        });
    }
    let _ = timeout(DISCONNECT, async { while set.join_next().await.is_some() {} }).await;

    let measured = Measured {
        users: &users,
        video,
        plan,
        window,
        all_joined,
        before: &before,
        after: &after,
        sent: (&sent_before, &sent_after),
        reports: &reports,
        server: (server_before_call, server0, server1),
        loadgen: (self0, self1),
    };
    Ok(measured.report(args, target, &shared))
}

/// Connects `n` media bots; returns them and their frame counters (by user).
async fn connect_bots(
    args: &BenchArgs,
    target: &Target,
    prefix: &str,
    n: usize,
    video: Option<VideoConfig>,
) -> anyhow::Result<(Vec<Bot>, HashMap<String, Counts>, Sent)> {
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut set = JoinSet::new();
    let mut counts = HashMap::new();
    let mut sent = Sent::new();
    for i in 0..n {
        let user = format!("{prefix}-{i}");
        let token = target.token(&user)?;
        let bot_counts: Counts = Arc::default();
        counts.insert(user.clone(), Arc::clone(&bot_counts));
        // A distinct tone per bot (200 Hz, 230 Hz, …), as a person's voice would be.
        #[allow(clippy::cast_precision_loss)]
        let hz = 200.0 + 30.0 * i as f64;
        let audio_sent = Arc::clone(sent.entry((user.clone(), MediaKind::Audio)).or_default());
        let mut media = MediaOptions::loopback().with_microphone(move || {
            let inner = Box::new(ToneSource::new(hz, 0.5, AudioConfig::default())?);
            Ok(Box::new(CountingSource { inner, sent: Arc::clone(&audio_sent) }) as Box<dyn MediaSource>)
        });
        if let Some(config) = video {
            let video_sent = Arc::clone(sent.entry((user.clone(), MediaKind::Video)).or_default());
            media = media.with_camera(move || {
                let inner = Box::new(TestPatternSource::new(config)?);
                Ok(Box::new(CountingSource { inner, sent: Arc::clone(&video_sent) }) as Box<dyn MediaSource>)
            });
        }
        let media = media.with_sinks(move |from, kind| {
            let mut map = bot_counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            // The same counter again if the sink is made anew: counts are cumulative.
            let counter = map.entry((from.to_string(), kind)).or_default();
            Some(Box::new(CountingSink(Arc::clone(counter))) as Box<dyn MediaSink>)
        });
        let options = ClientOptions::default().with_tls(target.tls.clone()).with_media(media);
        let (endpoint, gate) = (target.endpoint.clone(), gate.clone());
        set.spawn(async move {
            let _permit = gate.acquire_owned().await;
            (user, Client::connect(&endpoint, &token, options).await)
        });
    }
    let mut bots = Vec::with_capacity(n);
    let mut failed = Reasons::new();
    while let Some(joined) = set.join_next().await {
        match joined? {
            (user, Ok((client, events))) => {
                let Some(media) = client.media_events() else { bail!("a bot has no media events") };
                bots.push(Bot { user, client, events, media });
            }
            (_, Err(e)) => *failed.entry(code("connect", &e)).or_default() += 1,
        }
    }
    if !failed.is_empty() {
        bail!("{} of {n} bots could not connect: {}", n - bots.len(), reasons_line(&failed));
    }
    // The creator is the first user; the others in order, for a readable report.
    bots.sort_by_key(|b| b.user.rsplit('-').next().and_then(|i| i.parse::<usize>().ok()));
    Ok((bots, counts, sent))
}

/// One bot: joins (starts the call when it has `callees`, else accepts its invitation), then
/// keeps reading its events until told to stop.
async fn run_bot(
    mut bot: Bot,
    callees: Option<Vec<String>>,
    plan: Plan,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> (Bot, Reports) {
    let mut reports = Reports::default();
    let joined = match callees {
        Some(callees) => {
            let at = now_ms();
            match bot
                .client
                .start_call(&callees, CallType::Multi, plan.media_type, CallOptions::default())
                .await
            {
                Ok(_) => Ok(at),
                Err(e) => Err(code("start_call", &e)),
            }
        }
        None => invited(&mut bot, plan.join_timeout).await,
    };
    match joined {
        Ok(at) => {
            shared
                .joined_ms
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(bot.user.clone(), at);
        }
        Err(why) => {
            shared.fail(why);
            return (bot, reports);
        }
    }
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            event = bot.events.next() => match event {
                Some(Event::CallEnded { .. }) => {
                    shared.fail("call_ended".to_owned());
                    break;
                }
                Some(_) => {}
                None => {
                    shared.fail("disconnected".to_owned());
                    break;
                }
            },
            event = bot.media.next() => match event {
                Some(MediaEvent::FirstFrame { user, kind, at_ms, .. }) => {
                    if kind == plan.judged {
                        shared.firsts.fetch_add(1, Ordering::Relaxed);
                    }
                    shared
                        .first_frames
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push((bot.user.clone(), user.to_string(), kind, at_ms));
                }
                Some(MediaEvent::Stats(stats)) if shared.measuring.load(Ordering::Relaxed) => {
                    reports.count += 1;
                    for peer in &stats.per_peer {
                        reports.loss_pct_sum += peer.recv_loss_pct;
                        reports.video_packets_lost += u64::from(peer.video_packets_lost);
                        reports.video_packets_recovered += u64::from(peer.video_packets_recovered);
                        reports.keyframe_requests_sent += u64::from(peer.keyframe_requests_sent);
                    }
                }
                Some(MediaEvent::Error { message, .. }) => shared.fail(format!("media_error:{message}")),
                Some(_) => {}
                None => break,
            },
        }
    }
    (bot, reports)
}

/// Waits for the invitation and accepts it; the wall-clock ms of the accept.
async fn invited(bot: &mut Bot, within: Duration) -> Result<i64, String> {
    let call = timeout(within, async {
        loop {
            match bot.events.next().await {
                Some(Event::ReceivedCall { session, .. }) => return Some(session.call_id().clone()),
                Some(_) => {}
                None => return None,
            }
        }
    })
    .await
    .map_err(|_| "timeout:received_call".to_owned())?
    .ok_or_else(|| "disconnected".to_owned())?;
    let at = now_ms();
    bot.client.accept(&call).await.map_err(|e| code("accept", &e))?;
    Ok(at)
}

/// Every counter's value now, by (receiver, sender, kind).
fn snapshot(counts: &HashMap<String, Counts>) -> HashMap<(String, String, MediaKind), u64> {
    let mut all = HashMap::new();
    for (receiver, map) in counts {
        let map = map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for ((sender, kind), n) in map.iter() {
            all.insert((receiver.clone(), sender.clone(), *kind), n.load(Ordering::Relaxed));
        }
    }
    all
}

type Snapshot = HashMap<(String, String, MediaKind), u64>;

/// Samples sent by (sender, kind) at one moment.
type SentSnapshot = HashMap<(String, MediaKind), u64>;

/// What every bot's sources produced so far, by (sender, kind).
fn sent_now(sent: &Sent) -> SentSnapshot {
    sent.iter().map(|(key, n)| (key.clone(), n.load(Ordering::Relaxed))).collect()
}

/// Everything the report is made of.
struct Measured<'a> {
    users: &'a [String],
    video: Option<VideoConfig>,
    plan: Plan,
    window: f64,
    all_joined: bool,
    before: &'a Snapshot,
    after: &'a Snapshot,
    /// Samples sent by (sender, kind), at the window's start and end.
    sent: (&'a SentSnapshot, &'a SentSnapshot),
    reports: &'a HashMap<String, Reports>,
    /// Server: before the call, at the window's start and end.
    server: (Option<ProcStats>, Option<ProcStats>, Option<ProcStats>),
    loadgen: (Option<ProcStats>, Option<ProcStats>),
}

/// min and mean of a non-empty list, else `None`s.
fn min_mean(values: &[f64]) -> (Option<f64>, Option<f64>) {
    if values.is_empty() {
        return (None, None);
    }
    #[allow(clippy::cast_precision_loss)]
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    (values.iter().copied().reduce(f64::min), Some(mean))
}

fn opt3(x: Option<f64>) -> Value {
    x.map_or(Value::Null, |x| json!(round3(x)))
}

impl Measured<'_> {
    /// Frames per second from `sender` at `receiver` in the window (0 when none arrived).
    fn fps(&self, receiver: &str, sender: &str, kind: MediaKind) -> f64 {
        let key = (receiver.to_owned(), sender.to_owned(), kind);
        let n = self.after.get(&key).copied().unwrap_or(0) - self.before.get(&key).copied().unwrap_or(0);
        #[allow(clippy::cast_precision_loss)]
        let fps = n as f64 / self.window.max(1e-3);
        fps
    }

    /// Frames per second `sender`'s source produced in the window.
    fn sent_fps(&self, sender: &str, kind: MediaKind) -> f64 {
        let key = (sender.to_owned(), kind);
        let n = self.sent.1.get(&key).copied().unwrap_or(0) - self.sent.0.get(&key).copied().unwrap_or(0);
        #[allow(clippy::cast_precision_loss)]
        let fps = n as f64 / self.window.max(1e-3);
        fps
    }

    fn report(&self, args: &BenchArgs, target: &Target, shared: &Shared) -> Report {
        let n = self.users.len();
        let kinds: &[MediaKind] =
            if self.video.is_some() { &[MediaKind::Audio, MediaKind::Video] } else { &[MediaKind::Audio] };
        let nominal = self.video.map_or(AUDIO_FPS, |v| f64::from(v.fps));
        let judged_kind = self.plan.judged;
        let mut forwarded = 0usize;
        let mut participants = Vec::with_capacity(n);
        let (mut below, mut below_nominal) = (0usize, 0usize);
        let (mut all_video, mut all_audio, mut sent_judged) = (Vec::new(), Vec::new(), Vec::new());
        for receiver in self.users {
            let senders: Vec<&String> = self.users.iter().filter(|s| *s != receiver).collect();
            let mut per_kind: HashMap<MediaKind, Vec<f64>> = HashMap::new();
            // The judged kind's received rate as a share of what each sender really sent.
            let mut worst_share: Option<f64> = None;
            for sender in &senders {
                for &kind in kinds {
                    let fps = self.fps(receiver, sender, kind);
                    if fps > 0.0 {
                        forwarded += 1;
                    }
                    per_kind.entry(kind).or_default().push(fps);
                    if kind == judged_kind {
                        let sent = self.sent_fps(sender, kind);
                        let share = if sent > 0.0 { fps / sent } else { 0.0 };
                        worst_share = Some(worst_share.map_or(share, |w| w.min(share)));
                    }
                }
            }
            let audio = per_kind.remove(&MediaKind::Audio).unwrap_or_default();
            let video = per_kind.remove(&MediaKind::Video).unwrap_or_default();
            let judged = if self.video.is_some() { &video } else { &audio };
            if min_mean(judged).0.is_none_or(|m| m < HEALTHY * nominal) {
                below_nominal += 1;
            }
            if worst_share.is_none_or(|w| w < HEALTHY) {
                below += 1;
            }
            all_audio.extend_from_slice(&audio);
            all_video.extend_from_slice(&video);
            let (audio_min, audio_mean) = min_mean(&audio);
            let (video_min, video_mean) = min_mean(&video);
            let sent_audio = self.sent_fps(receiver, MediaKind::Audio);
            let sent_video = self.video.map(|_| self.sent_fps(receiver, MediaKind::Video));
            sent_judged.push(sent_video.unwrap_or(sent_audio));
            let r = self.reports.get(receiver).copied().unwrap_or_default();
            let loss = (r.count > 0).then(|| r.loss_pct_sum / f64::from(r.count));
            participants.push(json!({
                "user": receiver,
                "sent_audio_fps": round3(sent_audio),
                "sent_video_fps": opt3(sent_video),
                "audio_fps_min": opt3(audio_min),
                "audio_fps_mean": opt3(audio_mean),
                "video_fps_min": opt3(video_min),
                "video_fps_mean": opt3(video_mean),
                "worst_share_of_sent": opt3(worst_share),
                "recv_loss_pct": opt3(loss),
                "reports": r.count,
                "video_packets_lost": r.video_packets_lost,
                "video_packets_recovered": r.video_packets_recovered,
                "keyframe_requests_sent": r.keyframe_requests_sent,
            }));
        }
        let (sent_min, sent_mean) = min_mean(&sent_judged);
        let received: u64 =
            self.after.iter().map(|(k, n)| n - self.before.get(k).copied().unwrap_or(0)).sum();
        #[allow(clippy::cast_precision_loss)]
        let received_per_sec = received as f64 / self.window.max(1e-3);

        // Join -> first remote frame, per (receiver, sender): from the later of the two joins
        // (a sender sends nothing before it joined).
        let joined = shared.joined_ms.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let mut first_audio = Latency::default();
        let mut first_video = Latency::default();
        for (receiver, sender, kind, at) in
            shared.first_frames.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter()
        {
            let (Some(a), Some(b)) = (joined.get(receiver), joined.get(sender)) else { continue };
            let ms = u64::try_from(at - (*a).max(*b)).unwrap_or(0);
            let latency = if *kind == MediaKind::Video { &mut first_video } else { &mut first_audio };
            latency.record(Duration::from_millis(ms));
        }
        let first = if self.video.is_some() { &first_video } else { &first_audio };

        let (before_call, s0, s1) = self.server;
        let server_cpu = match (s0, s1) {
            (Some(a), Some(b)) => Some(b.cpu_s - a.cpu_s),
            _ => None,
        };
        let util = server_cpu.map(|c| c / self.window.max(1e-3));
        #[allow(clippy::cast_precision_loss)]
        let per_stream = util.filter(|_| forwarded > 0).map(|u| u * 100.0 / forwarded as f64);
        // Per frame the bots received: what a stream costs depends on its frame rate, which falls
        // when the bots run short of CPU.
        #[allow(clippy::cast_precision_loss)]
        let per_frame_us = server_cpu.filter(|_| received > 0).map(|c| c * 1e6 / received as f64);
        let rss_growth = match (before_call, s1) {
            (Some(a), Some(b)) => Some(b.rss_kib.saturating_sub(a.rss_kib)),
            _ => None,
        };
        let loadgen = match self.loadgen {
            (Some(a), Some(b)) => Some((b.cpu_s - a.cpu_s) / self.window.max(1e-3)),
            _ => None,
        };
        let (video_min, video_mean) = min_mean(&all_video);
        let (audio_min, audio_mean) = min_mean(&all_audio);
        let failed = shared.failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let expected = n * (n - 1) * kinds.len();
        let media_type = if self.video.is_some() { "audio_video" } else { "audio" };

        let mut lines = vec![
            format!("server: {} ({})", target.endpoint, target.describe()),
            format!(
                "group call: {n} participants, {media_type}{}, measured {:.1} s{}",
                self.video
                    .map_or_else(String::new, |v| format!(" {}x{} at {} fps", v.width, v.height, v.fps)),
                self.window,
                if self.all_joined { "" } else { " (NOT everyone received everyone before it)" }
            ),
            format!("forwarded streams: {forwarded} of {expected}"),
            format!(
                "received fps per (receiver, sender): audio min {} mean {}; video min {} mean {}",
                fmt1(audio_min),
                fmt1(audio_mean),
                fmt1(video_min),
                fmt1(video_mean)
            ),
            format!(
                "sent {judged_kind:?} fps per bot: min {} mean {} (nominal {nominal})",
                fmt1(sent_min),
                fmt1(sent_mean)
            ),
            format!(
                "participants receiving some sender below {:.0} % of what it sent: {below}; below {:.0} % of the nominal rate: {below_nominal}",
                HEALTHY * 100.0,
                HEALTHY * 100.0
            ),
            format!("join -> first remote {:?} frame: {}", self.plan.judged, first.line()),
            format!(
                "server CPU: {} cores, {} % of a core per forwarded stream, {} µs per forwarded frame ({received_per_sec:.0} frames/s); RSS {} KiB (+{} KiB for the call)",
                fmt1(util),
                per_stream.map_or_else(|| "-".to_owned(), |p| format!("{p:.3}")),
                fmt1(per_frame_us),
                s1.map_or(0, |s| s.rss_kib),
                rss_growth.unwrap_or(0)
            ),
            format!("load generator CPU: {} cores", fmt1(loadgen)),
            format!("failed: {}", reasons_line(&failed)),
        ];
        if target.shares_process() {
            lines.push("note: the server runs in this process: its CPU and RSS include the bots".to_owned());
        }
        let json = json!({
            "mode": "group",
            "participants": n,
            "media_type": media_type,
            "video": self.video.map(|v| json!({"width": v.width, "height": v.height, "fps": v.fps})),
            "duration_s": round3(self.window),
            "everyone_received_everyone": self.all_joined,
            "forwarded_streams": forwarded,
            "expected_streams": expected,
            "nominal_fps": nominal,
            "sent_fps": {"min": opt3(sent_min), "mean": opt3(sent_mean)},
            "audio_fps": {"min": opt3(audio_min), "mean": opt3(audio_mean)},
            "video_fps": {"min": opt3(video_min), "mean": opt3(video_mean)},
            "participants_below_90pct": below,
            "participants_below_90pct_of_nominal": below_nominal,
            "per_participant": participants,
            "join_to_first_frame_ms": first.json(),
            "join_to_first_audio_ms": first_audio.json(),
            "join_to_first_video_ms": first_video.json(),
            "server_cpu_s": server_cpu.map(round3),
            "server_cpu_util": util.map(round3),
            "sfu_cpu_pct_per_stream": per_stream.map(round3),
            "received_frames_per_sec": round3(received_per_sec),
            "server_cpu_us_per_forwarded_frame": per_frame_us.map(round3),
            "server_rss_kib": s1.map(|s| s.rss_kib),
            "server_peak_rss_kib": s1.map(|s| s.peak_rss_kib),
            "server_rss_before_call_kib": before_call.map(|s| s.rss_kib),
            "sfu_rss_growth_kib": rss_growth,
            "loadgen_cpu_util": loadgen.map(round3),
            "failed_by_reason": failed,
            "endpoint": target.endpoint,
            "server_in_process": target.shares_process(),
            "connect_concurrency": args.connect_concurrency,
            "machine": machine(),
        });
        Report { lines, json }
    }
}

fn fmt1(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_owned(), |x| format!("{x:.1}"))
}
