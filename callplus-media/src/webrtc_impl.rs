//! [`WebRtcMediaAdapter`]: the [`MediaAdapter`] on the `webrtc` crate (0.21, sans-IO `rtc` core).
//!
//! Layout:
//! - one `PeerConnection` per remote device of a call (full mesh), each with one Opus and one
//!   VP8 sending track, negotiated once; AUDIO calls simply never send video, so switching the
//!   media type needs no renegotiation;
//! - two *pumps* (tasks), audio and video, pull the app's [`MediaSource`]s and fan every sample
//!   out to the connected peers' tracks ("send targets"); mute, switch and config are commands
//!   to the pumps;
//! - one receive task per remote track depacketizes, feeds the user's [`MediaSink`], tracks the
//!   first frame, (audio) decodes for the audio level and (video) sends a PLI when the stream
//!   cannot be decoded until the next key frame;
//! - one interceptor per peer connection (`rtcp_observer`) reads the peer's reception reports and
//!   its key-frame requests (PLI/FIR), which become a key-frame request to the video source;
//! - one stats task per call turns `get_stats` into the once-a-second [`MediaStats`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex as StdMutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use callplus_session::{CallId, Code, DeviceId, IceServer, MediaKind, MediaPayload, MediaType, UserId};
use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::{NackGeneratorBuilder, NackResponderBuilder, Slot};
use rtc::media::Sample;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MIME_TYPE_VP8};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceCandidateInit, RTCIceServer, RTCPeerConnectionIceEvent, RTCPeerConnectionState,
    RTCSessionDescription, RTCStatsReportEntry, Registry, SettingEngineBuilder, StatsSelector,
    configure_rtcp_reports, configure_simulcast_extension_headers, configure_twcc_receiver_only,
};
use webrtc::rtp_transceiver::RtpSender;

use crate::adapter::{MediaAdapter, MediaEvent, MediaEvents, MediaStats, PeerSpec, PeerStats, StartMedia};
use crate::error::MediaError;
use crate::level::level_from_mean_square;
use crate::pli_pacer::{Pacer, pli_hold_off};
use crate::reorder::{self, Pushed, ReorderBuffer};
use crate::rtcp_observer::{RemoteReports, RtcpObserver};
use crate::sink::{MediaSink, RemoteFrame};
use crate::source::{AudioConfig, EncodedSample, MediaSource, VideoConfig};
use crate::vp8::{Vp8Depacketizer, is_keyframe};

/// Payload types we offer.
const OPUS_PT: u8 = 111;
const VP8_PT: u8 = 96;
/// Interceptor slot of the RTCP observer: wire-side of the RR/SR interceptors (10 000 and
/// 11 000), which consume reports on the way in and create sender reports on the way out.
const RTCP_OBSERVER_SLOT: usize = 9_500;
/// Calls remembered as ended, so their late signals are dropped instead of buffered.
const ENDED_MEMORY: usize = 64;
/// Calls whose signals may be buffered before `start`.
const MAX_PENDING_CALLS: usize = 16;

/// Settings of the WebRTC backend.
#[derive(Debug, Clone, PartialEq)]
pub struct WebRtcConfig {
    /// Local UDP addresses ICE binds to, e.g. `"0.0.0.0:0"` (every interface but loopback) or
    /// `"127.0.0.1:0"` (tests). Each becomes host candidates.
    pub bind_addrs: Vec<String>,
    /// Largest mesh (participants including the local user) for AUDIO_VIDEO calls.
    pub max_mesh_video: usize,
    /// Largest mesh for AUDIO calls.
    pub max_mesh_audio: usize,
    /// Period of [`MediaEvent::Stats`] and [`MediaEvent::AudioLevel`] reports.
    pub stats_interval: Duration,
    /// Signals kept per call while its media is not started yet.
    pub max_pending_signals: usize,
}

impl Default for WebRtcConfig {
    fn default() -> Self {
        WebRtcConfig {
            bind_addrs: vec!["0.0.0.0:0".to_owned()],
            max_mesh_video: 4,
            max_mesh_audio: 8,
            stats_interval: Duration::from_secs(1),
            max_pending_signals: 256,
        }
    }
}

impl WebRtcConfig {
    /// The defaults, bound to 127.0.0.1 only (tests, same-host calls).
    pub fn loopback() -> Self {
        WebRtcConfig { bind_addrs: vec!["127.0.0.1:0".to_owned()], ..Self::default() }
    }
}

type PeerKey = (UserId, DeviceId);
/// The app's sinks, by remote user and kind.
type Sinks = Arc<StdMutex<HashMap<(UserId, MediaKind), Box<dyn MediaSink>>>>;

/// A connected peer's sending track for one kind.
struct SendTarget {
    track: Arc<TrackLocalStaticSample>,
    ssrc: u32,
    payload_type: u8,
}

#[derive(Default)]
struct Targets {
    audio: Vec<Arc<SendTarget>>,
    video: Vec<Arc<SendTarget>>,
}

enum PumpCmd {
    Source(Box<dyn MediaSource>, oneshot::Sender<()>),
    Enabled(bool, oneshot::Sender<()>),
    Video(VideoConfig),
    Audio(AudioConfig),
    /// The target list changed, or a peer asked for a key frame (RTCP PLI/FIR, coalesced per
    /// peer); `keyframe` asks the video source for one.
    Wake {
        keyframe: bool,
    },
}

struct LocalTrack {
    track: Arc<TrackLocalStaticSample>,
    sender: Arc<dyn RtpSender>,
    ssrc: u32,
}

struct PeerEntry {
    pc: Arc<dyn PeerConnection>,
    shared: Arc<PeerShared>,
    audio: LocalTrack,
    video: LocalTrack,
    audio_target: Option<Arc<SendTarget>>,
    video_target: Option<Arc<SendTarget>>,
    remote_set: bool,
    pending_candidates: Vec<RTCIceCandidateInit>,
}

struct CallEntry {
    media_type: MediaType,
    local_user: UserId,
    local_device: DeviceId,
    ice_servers: Vec<IceServer>,
    peers: HashMap<PeerKey, PeerEntry>,
    stats_task: JoinHandle<()>,
}

struct PendingSignal {
    user: UserId,
    device: DeviceId,
    payload: MediaPayload,
}

#[derive(Default)]
struct State {
    calls: HashMap<CallId, CallEntry>,
    pending: HashMap<CallId, VecDeque<PendingSignal>>,
    ended: VecDeque<CallId>,
}

struct Inner {
    config: WebRtcConfig,
    events: mpsc::UnboundedSender<MediaEvent>,
    state: Mutex<State>,
    sinks: Sinks,
    targets: Arc<RwLock<Targets>>,
    audio_pump: mpsc::UnboundedSender<PumpCmd>,
    video_pump: mpsc::UnboundedSender<PumpCmd>,
    /// The local source's last audio level; `NO_LEVEL` when unknown or muted.
    local_level: Arc<AtomicU8>,
    /// `mute_all_remote_audio`: remote audio is received but not handed to sinks.
    remote_audio_muted: Arc<AtomicBool>,
}

const NO_LEVEL: u8 = u8::MAX;

/// What the peer's callbacks and receive tasks share.
struct PeerShared {
    call_id: CallId,
    user: UserId,
    device: DeviceId,
    events: mpsc::UnboundedSender<MediaEvent>,
    inner: Weak<Inner>,
    sinks: Sinks,
    /// Local ICE candidates held until our offer/answer went out (so it is sent first).
    held_candidates: StdMutex<Option<Vec<MediaPayload>>>,
    connected: AtomicBool,
    closed: AtomicBool,
    first_audio: AtomicBool,
    first_video: AtomicBool,
    /// Sum of squares and count of decoded samples since the last level report.
    level: StdMutex<(f64, u64)>,
    /// The peer's reception reports and key-frame requests about what we send.
    reports: Arc<StdMutex<RemoteReports>>,
    /// SSRC of the video we send to this peer (the sender SSRC of our PLIs).
    video_ssrc: u32,
    /// PLIs sent to this peer since the last status report.
    plis_sent: AtomicU32,
    /// Video packets from this peer put back in place by the reorder buffer, and missing ones it
    /// gave up, since the last status report.
    video_recovered: AtomicU32,
    video_lost: AtomicU32,
    /// The adapter's `mute_all_remote_audio` switch.
    remote_audio_muted: Arc<AtomicBool>,
}

impl PeerShared {
    fn emit(&self, event: MediaEvent) {
        if !self.closed.load(Ordering::Acquire) {
            let _ = self.events.send(event);
        }
    }

    fn send_signal(&self, payload: MediaPayload) {
        self.emit(MediaEvent::Signal {
            call_id: self.call_id.clone(),
            to_user: self.user.clone(),
            to_device: self.device.clone(),
            payload,
        });
    }

    /// Our description went out: release the held candidates behind it.
    fn release_candidates(&self) {
        let held = lock(&self.held_candidates).take();
        for payload in held.unwrap_or_default() {
            self.send_signal(payload);
        }
    }

    fn deliver(&self, frame: RemoteFrame) {
        // The first *decodable* frame: for video, a key frame.
        let first = match frame.kind {
            MediaKind::Audio => &self.first_audio,
            MediaKind::Video => &self.first_video,
        };
        if frame.keyframe && !first.swap(true, Ordering::AcqRel) {
            tracing::debug!(call = %self.call_id, user = %self.user, kind = ?frame.kind, "first remote frame");
            self.emit(MediaEvent::FirstFrame {
                call_id: self.call_id.clone(),
                user: self.user.clone(),
                kind: frame.kind,
                at_ms: now_ms(),
            });
        }
        if frame.kind == MediaKind::Audio && self.remote_audio_muted.load(Ordering::Acquire) {
            // Still received (levels, stats and the first frame go on), just not played.
            return;
        }
        let mut sinks = lock(&self.sinks);
        let key = (self.user.clone(), frame.kind);
        if let Some(sink) = sinks.get_mut(&key)
            && let Err(e) = sink.on_frame(&frame)
        {
            tracing::warn!(user = %self.user, error = %e, "sink failed; removed");
            if let Some(mut sink) = sinks.remove(&key) {
                sink.on_end();
            }
            self.emit(MediaEvent::FetchRemoteMediaError {
                call_id: self.call_id.clone(),
                user: self.user.clone(),
                code: Code::PlayMediaFailed,
            });
        }
    }
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data behind: keep going.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

struct PeerHandler {
    shared: Arc<PeerShared>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for PeerHandler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        let init = match event.candidate.to_json() {
            Ok(init) => init,
            Err(e) => {
                tracing::debug!(error = %e, "unserializable local candidate skipped");
                return;
            }
        };
        let payload = MediaPayload::IceCandidate {
            candidate: init.candidate,
            sdp_mid: init.sdp_mid.unwrap_or_default(),
            sdp_mline_index: u32::from(init.sdp_mline_index.unwrap_or(0)),
        };
        {
            let mut held = lock(&self.shared.held_candidates);
            if let Some(held) = held.as_mut() {
                held.push(payload);
                return;
            }
        }
        self.shared.send_signal(payload);
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let s = &self.shared;
        tracing::debug!(call = %s.call_id, peer = %s.user, device = %s.device, ?state, "peer connection state");
        match state {
            RTCPeerConnectionState::Connected if !s.connected.swap(true, Ordering::AcqRel) => {
                s.emit(MediaEvent::PeerConnected {
                    call_id: s.call_id.clone(),
                    user: s.user.clone(),
                    device: s.device.clone(),
                });
                // The driver is calling us: query it from another task.
                let inner = s.inner.clone();
                let key = (s.call_id.clone(), (s.user.clone(), s.device.clone()));
                tokio::spawn(async move {
                    if let Some(inner) = inner.upgrade() {
                        inner.peer_connected(&key.0, &key.1).await;
                    }
                });
            }
            RTCPeerConnectionState::Failed => {
                s.emit(MediaEvent::FetchRemoteMediaError {
                    call_id: s.call_id.clone(),
                    user: s.user.clone(),
                    code: Code::RtcServiceUnavailable,
                });
                s.emit(MediaEvent::Error {
                    call_id: Some(s.call_id.clone()),
                    message: format!("media connection to {}/{} failed", s.user, s.device),
                });
            }
            _ => {}
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let shared = Arc::clone(&self.shared);
        tokio::spawn(receive_loop(shared, track));
    }
}

/// Reads one remote track until it ends.
async fn receive_loop(shared: Arc<PeerShared>, track: Arc<dyn TrackRemote>) {
    let kind = match track.kind().await {
        RtpCodecKind::Audio => MediaKind::Audio,
        RtpCodecKind::Video => MediaKind::Video,
        other => {
            tracing::debug!(?other, "ignoring remote track of unknown kind");
            return;
        }
    };
    shared.emit(MediaEvent::UserMediaAvailable {
        call_id: shared.call_id.clone(),
        user: shared.user.clone(),
        kind,
    });
    // Audio tracks leave it empty: it never has a deadline.
    let mut video = VideoReceive::new();
    let mut decoder = match kind {
        MediaKind::Audio => opus::Decoder::new(48_000, opus::Channels::Mono)
            .map_err(|e| tracing::warn!(error = %e, "no opus decoder: no audio levels"))
            .ok(),
        MediaKind::Video => None,
    };
    let mut pcm = vec![0i16; 5760];
    loop {
        // Video packets behind a gap wait in the reorder buffer: wake up when it gives the gap
        // up, if no packet comes first. (`poll` is a channel receive: cancel-safe.)
        let deadline = video.reorder.next_deadline();
        let wake = tokio::select! {
            event = track.poll() => Wake::Track(event),
            () = sleep_until(deadline), if deadline.is_some() => Wake::Deadline,
        };
        if shared.closed.load(Ordering::Acquire) {
            break;
        }
        let event = match wake {
            Wake::Track(Some(event)) => event,
            Wake::Track(None) => break,
            Wake::Deadline => {
                video.release(&shared, track.as_ref(), Instant::now()).await;
                continue;
            }
        };
        match event {
            TrackRemoteEvent::OnRtpPacket(packet) => match kind {
                // Opus conceals a lost packet better than a late one helps: audio is not held
                // back for reordering (and its RTCP feedback offers no NACK).
                MediaKind::Audio => {
                    if packet.payload.is_empty() {
                        continue;
                    }
                    if let Some(decoder) = decoder.as_mut()
                        && let Ok(n) = decoder.decode(&packet.payload, &mut pcm, false)
                    {
                        let sum: f64 = pcm[..n].iter().map(|&v| f64::from(v) * f64::from(v)).sum();
                        let mut level = lock(&shared.level);
                        level.0 += sum;
                        level.1 += n as u64;
                    }
                    shared.deliver(RemoteFrame {
                        kind,
                        data: packet.payload.clone(),
                        rtp_timestamp: packet.header.timestamp,
                        keyframe: true,
                    });
                }
                MediaKind::Video => {
                    let now = Instant::now();
                    video.reorder.set_max_wait(reorder::max_wait(lock(&shared.reports).rtt_estimate()));
                    let seq = packet.header.sequence_number;
                    let pushed = video.reorder.push(seq, packet, now);
                    if pushed != Pushed::Accepted {
                        tracing::trace!(seq, ?pushed, "video packet dropped by the reorder buffer");
                    }
                    video.release(&shared, track.as_ref(), now).await;
                }
            },
            TrackRemoteEvent::OnError => shared.emit(MediaEvent::FetchRemoteMediaError {
                call_id: shared.call_id.clone(),
                user: shared.user.clone(),
                code: Code::MediaResourceInvalid,
            }),
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
    tracing::debug!(call = %shared.call_id, user = %shared.user, ?kind, "remote track ended");
}

/// Why the receive loop woke up.
enum Wake {
    /// The track's next event; `None` once it is gone.
    Track(Option<TrackRemoteEvent>),
    /// The reorder buffer's deadline passed.
    Deadline,
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// The receive path of one remote video track: reorder buffer, VP8 depacketizer, PLI pacing.
struct VideoReceive {
    reorder: ReorderBuffer<rtp::Packet>,
    vp8: Vp8Depacketizer,
    pli: Pacer,
}

impl VideoReceive {
    fn new() -> Self {
        VideoReceive {
            reorder: ReorderBuffer::new(reorder::max_wait(None)),
            vp8: Vp8Depacketizer::new(),
            pli: Pacer::new(),
        }
    }

    /// Depacketizes what the reorder buffer lets go at `now`: complete frames go to the sink, and
    /// a stream that cannot be decoded (a gap given up, among others) asks for a key frame.
    async fn release(&mut self, shared: &PeerShared, track: &dyn TrackRemote, now: Instant) {
        while let Some(packet) = self.reorder.poll(now) {
            let header = &packet.header;
            let frame =
                self.vp8.push(header.sequence_number, header.timestamp, header.marker, &packet.payload);
            if self.vp8.needs_keyframe() {
                request_keyframe(shared, track, &mut self.pli, header.ssrc).await;
            }
            if let Some((data, rtp_timestamp)) = frame {
                shared.deliver(RemoteFrame {
                    kind: MediaKind::Video,
                    keyframe: is_keyframe(&data),
                    data,
                    rtp_timestamp,
                });
            }
        }
        let counts = self.reorder.take_counts();
        if counts.lost > 0 {
            tracing::debug!(call = %shared.call_id, user = %shared.user, lost = counts.lost, "video gap given up");
        }
        shared.video_recovered.fetch_add(counts.recovered, Ordering::Relaxed);
        shared.video_lost.fetch_add(counts.lost, Ordering::Relaxed);
    }
}

/// Sends a PLI for the remote video stream `media_ssrc` if the pacer lets one through.
async fn request_keyframe(shared: &PeerShared, track: &dyn TrackRemote, pacer: &mut Pacer, media_ssrc: u32) {
    let rtt = lock(&shared.reports).rtt_estimate();
    if !pacer.poll(Instant::now(), pli_hold_off(rtt)) {
        return;
    }
    let pli = PictureLossIndication { sender_ssrc: shared.video_ssrc, media_ssrc };
    match track.write_rtcp(vec![Box::new(pli)]).await {
        Ok(()) => {
            shared.plis_sent.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(call = %shared.call_id, user = %shared.user, media_ssrc, "video undecodable: PLI sent");
        }
        Err(e) => tracing::debug!(error = %e, "PLI not sent"),
    }
}

/// Pulls one kind's source and fans its samples out to the targets.
async fn pump(
    kind: MediaKind,
    mut commands: mpsc::UnboundedReceiver<PumpCmd>,
    targets: Arc<RwLock<Targets>>,
    local_level: Arc<AtomicU8>,
) {
    let mut source: Option<Box<dyn MediaSource>> = None;
    let mut enabled = true;
    let mut video_config: Option<VideoConfig> = None;
    let mut audio_config: Option<AudioConfig> = None;
    let has_targets = |targets: &RwLock<Targets>| {
        let t = targets.read().unwrap_or_else(|p| p.into_inner());
        match kind {
            MediaKind::Audio => !t.audio.is_empty(),
            MediaKind::Video => !t.video.is_empty(),
        }
    };
    loop {
        let active = enabled && source.is_some() && has_targets(&targets);
        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else { break };
                match command {
                    PumpCmd::Source(mut new, ack) => {
                        if let Some(c) = &video_config { new.apply_video_config(c) }
                        if let Some(c) = &audio_config { new.apply_audio_config(c) }
                        new.request_keyframe();
                        source = Some(new);
                        let _ = ack.send(());
                    }
                    PumpCmd::Enabled(on, ack) => {
                        enabled = on;
                        if on {
                            if let Some(s) = source.as_mut() { s.request_keyframe() }
                        } else if kind == MediaKind::Audio {
                            local_level.store(NO_LEVEL, Ordering::Release);
                        }
                        let _ = ack.send(());
                    }
                    PumpCmd::Video(c) => {
                        if let Some(s) = source.as_mut() { s.apply_video_config(&c) }
                        video_config = Some(c);
                    }
                    PumpCmd::Audio(c) => {
                        if let Some(s) = source.as_mut() { s.apply_audio_config(&c) }
                        audio_config = Some(c);
                    }
                    PumpCmd::Wake { keyframe } => {
                        if keyframe && let Some(s) = source.as_mut() { s.request_keyframe() }
                    }
                }
            }
            sample = next_sample(&mut source), if active => {
                match sample {
                    Some(sample) => {
                        if kind == MediaKind::Audio {
                            local_level.store(sample.audio_level.unwrap_or(NO_LEVEL), Ordering::Release);
                        }
                        fan_out(kind, &targets, sample).await;
                    }
                    None => {
                        tracing::info!(?kind, "local source ended");
                        source = None;
                    }
                }
            }
        }
    }
}

async fn next_sample(source: &mut Option<Box<dyn MediaSource>>) -> Option<EncodedSample> {
    match source.as_mut() {
        Some(source) => source.next_sample().await,
        None => std::future::pending().await,
    }
}

async fn fan_out(kind: MediaKind, targets: &RwLock<Targets>, sample: EncodedSample) {
    let list: Vec<Arc<SendTarget>> = {
        let t = targets.read().unwrap_or_else(|p| p.into_inner());
        match kind {
            MediaKind::Audio => t.audio.clone(),
            MediaKind::Video => t.video.clone(),
        }
    };
    let sample = Sample { data: sample.data, duration: sample.duration, ..Sample::new(Instant::now()) };
    for target in list {
        if let Err(e) =
            target.track.sample_writer(target.ssrc, target.payload_type).write_sample(&sample).await
        {
            tracing::debug!(error = %e, ?kind, "sample not sent");
        }
    }
}

/// Turns one peer's stats report into the numbers of a status report.
#[derive(Default, Clone, Copy)]
struct Counters {
    bytes: u64,
    received: u64,
    lost: i64,
    at: Option<Instant>,
}

/// Periodic stats for one call.
async fn stats_loop(inner: Weak<Inner>, call_id: CallId, period: Duration) {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut previous: HashMap<PeerKey, Counters> = HashMap::new();
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else { break };
        let (local_user, peers) = {
            let state = inner.state.lock().await;
            let Some(call) = state.calls.get(&call_id) else { break };
            let peers: Vec<(PeerKey, Arc<dyn PeerConnection>, Arc<PeerShared>)> = call
                .peers
                .iter()
                .filter(|(_, p)| p.shared.connected.load(Ordering::Acquire))
                .map(|(k, p)| (k.clone(), Arc::clone(&p.pc), Arc::clone(&p.shared)))
                .collect();
            (call.local_user.clone(), peers)
        };
        let mut per_peer = Vec::new();
        let (mut loss_sum, mut loss_n, mut rtt_sum, mut rtt_n) = (0.0, 0u32, 0.0, 0u32);
        for (key, pc, shared) in &peers {
            let now = Instant::now();
            let report = pc.get_stats(now, StatsSelector::None).await;
            let mut current = Counters { at: Some(now), ..Counters::default() };
            let (send_loss, rtcp_rtt, keyframe_requests_received) = {
                let mut reports = lock(&shared.reports);
                let (loss, rtt) = reports.take();
                (loss, rtt, reports.keyframes.take_received())
            };
            if let Some(loss) = send_loss {
                loss_sum += loss;
                loss_n += 1;
            }
            let mut ice_rtt = None::<f64>;
            for entry in report.iter() {
                match entry {
                    RTCStatsReportEntry::InboundRtp(s) => {
                        current.bytes += s.bytes_received + s.header_bytes_received;
                        current.received += s.received_rtp_stream_stats.packets_received;
                        current.lost += s.received_rtp_stream_stats.packets_lost;
                    }
                    RTCStatsReportEntry::IceCandidatePair(s)
                        if s.nominated && s.current_round_trip_time > 0.0 =>
                    {
                        ice_rtt = Some(s.current_round_trip_time * 1000.0);
                    }
                    _ => {}
                }
            }
            // The receive paths wait for retransmissions and key frames by it; a peer that sends
            // us nothing has no RTCP RTT, but the ICE one is as good.
            lock(&shared.reports).ice_rtt = ice_rtt.map(|ms| Duration::from_secs_f64(ms / 1000.0));
            if let Some(rtt) = rtcp_rtt.map(|d| d.as_secs_f64() * 1000.0).or(ice_rtt) {
                rtt_sum += rtt;
                rtt_n += 1;
            }
            let before = previous.get(key).copied().unwrap_or_default();
            let elapsed = before.at.map(|at| now.duration_since(at).as_secs_f64()).unwrap_or(0.0);
            let bitrate_kbps = if elapsed > 0.0 {
                current.bytes.saturating_sub(before.bytes) as f64 * 8.0 / elapsed / 1000.0
            } else {
                0.0
            };
            let got = current.received.saturating_sub(before.received) as f64;
            let lost = (current.lost - before.lost).max(0) as f64;
            let recv_loss_pct = if got + lost > 0.0 { lost / (got + lost) * 100.0 } else { 0.0 };
            previous.insert(key.clone(), current);
            per_peer.push(PeerStats {
                user: key.0.clone(),
                device: key.1.clone(),
                recv_loss_pct,
                bitrate_kbps,
                keyframe_requests_sent: shared.plis_sent.swap(0, Ordering::Relaxed),
                keyframe_requests_received,
                video_packets_recovered: shared.video_recovered.swap(0, Ordering::Relaxed),
                video_packets_lost: shared.video_lost.swap(0, Ordering::Relaxed),
            });

            let (sum, n) = std::mem::take(&mut *lock(&shared.level));
            if n > 0 {
                shared.emit(MediaEvent::AudioLevel {
                    call_id: call_id.clone(),
                    user: key.0.clone(),
                    level: level_from_mean_square(sum / n as f64),
                });
            }
        }
        previous.retain(|k, _| peers.iter().any(|(p, _, _)| p == k));
        if peers.is_empty() {
            continue;
        }
        let level = inner.local_level.load(Ordering::Acquire);
        if level != NO_LEVEL {
            let _ = inner.events.send(MediaEvent::AudioLevel {
                call_id: call_id.clone(),
                user: local_user,
                level,
            });
        }
        let _ = inner.events.send(MediaEvent::Stats(MediaStats {
            call_id: call_id.clone(),
            send_loss_pct: if loss_n > 0 { loss_sum / f64::from(loss_n) } else { 0.0 },
            rtt_ms: (rtt_n > 0).then(|| rtt_sum / f64::from(rtt_n)),
            per_peer,
        }));
    }
}

fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

fn vp8_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_VP8.to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![],
    }
}

/// `rtc`'s `register_default_interceptors` (NACK, RTCP reports, simulcast header extensions, TWCC
/// feedback; its documentation asks to copy it for changes), with the NACK generator tuned for the
/// reorder buffer (`reorder`): the default one lists missing packets every 100 ms, longer than
/// the buffer waits for them on a short path, and keeps asking for a packet until it leaves its
/// 512-packet log. Ours asks every [`reorder::NACK_INTERVAL`], at most for as long as the buffer
/// can wait. The sender side answers with plain retransmissions on the media SSRC (no RTX is
/// negotiated), which reach the track with their original sequence numbers.
fn interceptors(media: &mut MediaEngine) -> Result<Registry, MediaError> {
    // Advertised for video: `a=rtcp-fb:96 nack` and `nack pli`.
    for parameter in ["", "pli"] {
        media.register_feedback(
            RTCPFeedback { typ: "nack".to_owned(), parameter: parameter.to_owned() },
            RtpCodecKind::Video,
        );
    }
    let nacks_per_packet = (reorder::MAX_WAIT.as_millis() / reorder::NACK_INTERVAL.as_millis()) as u16;
    let registry = Registry::new().with(Slot::NackResponder, NackResponderBuilder::new().build()).with(
        Slot::NackGenerator,
        NackGeneratorBuilder::new()
            .with_interval(reorder::NACK_INTERVAL)
            .with_max_nacks_per_packet(nacks_per_packet)
            .build(),
    );
    configure_simulcast_extension_headers(media)?;
    let registry = configure_twcc_receiver_only(registry, media)?;
    Ok(configure_rtcp_reports(registry))
}

fn ice_server(server: &IceServer) -> RTCIceServer {
    RTCIceServer {
        urls: server.urls.clone(),
        username: server.username.clone(),
        credential: server.credential.clone(),
    }
}

impl Inner {
    /// Rebuilds the send-target lists from every call and wakes the pumps.
    fn sync_targets(&self, state: &State, keyframe: bool) {
        let mut fresh = Targets::default();
        for call in state.calls.values() {
            for peer in call.peers.values() {
                if let Some(t) = &peer.audio_target {
                    fresh.audio.push(Arc::clone(t));
                }
                if call.media_type == MediaType::AudioVideo
                    && let Some(t) = &peer.video_target
                {
                    fresh.video.push(Arc::clone(t));
                }
            }
        }
        *self.targets.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        let _ = self.audio_pump.send(PumpCmd::Wake { keyframe: false });
        let _ = self.video_pump.send(PumpCmd::Wake { keyframe });
    }

    /// A peer's connection came up: find the negotiated payload types and start sending to it.
    async fn peer_connected(&self, call_id: &CallId, key: &PeerKey) {
        let mut state = self.state.lock().await;
        let Some(peer) = state.calls.get_mut(call_id).and_then(|c| c.peers.get_mut(key)) else { return };
        for kind in [MediaKind::Audio, MediaKind::Video] {
            let local = match kind {
                MediaKind::Audio => &peer.audio,
                MediaKind::Video => &peer.video,
            };
            let payload_type = match local.sender.get_parameters().await {
                Ok(p) => p.rtp_parameters.codecs.first().map(|c| c.payload_type),
                Err(e) => {
                    tracing::warn!(error = %e, "sender parameters unavailable");
                    None
                }
            };
            let Some(payload_type) = payload_type else {
                tracing::debug!(?kind, peer = %key.0, "nothing negotiated to send");
                continue;
            };
            let target =
                Arc::new(SendTarget { track: Arc::clone(&local.track), ssrc: local.ssrc, payload_type });
            match kind {
                MediaKind::Audio => peer.audio_target = Some(target),
                MediaKind::Video => peer.video_target = Some(target),
            }
        }
        self.sync_targets(&state, true);
    }

    async fn new_peer(
        self: &Arc<Self>,
        call_id: &CallId,
        local_user: &UserId,
        ice_servers: &[IceServer],
        spec: &PeerSpec,
    ) -> Result<PeerEntry, MediaError> {
        let mut media = MediaEngine::default();
        media.register_codec(
            RTCRtpCodecParameters { rtp_codec: opus_codec(), payload_type: OPUS_PT },
            RtpCodecKind::Audio,
        )?;
        media.register_codec(
            RTCRtpCodecParameters { rtp_codec: vp8_codec(), payload_type: VP8_PT },
            RtpCodecKind::Video,
        )?;
        let (audio_ssrc, video_ssrc) = (rand_ssrc(), rand_ssrc());
        let reports = Arc::new(StdMutex::new(RemoteReports::new(video_ssrc)));
        // Weak: a connection outliving the adapter must not keep the pump (and the camera) alive.
        let video_pump = self.video_pump.downgrade();
        let on_keyframe_request = Box::new(move || {
            if let Some(pump) = video_pump.upgrade() {
                let _ = pump.send(PumpCmd::Wake { keyframe: true });
            }
        });
        let observer = RtcpObserver::new(Arc::clone(&reports), on_keyframe_request);
        let registry = interceptors(&mut media)?.with(Slot::from(RTCP_OBSERVER_SLOT), observer);
        let settings =
            SettingEngineBuilder::new().with_multicast_dns_mode(MulticastDnsMode::Disabled).build();
        let configuration = RTCConfigurationBuilder::new()
            .with_ice_servers(ice_servers.iter().map(ice_server).collect())
            .build();
        let shared = Arc::new(PeerShared {
            call_id: call_id.clone(),
            user: spec.user_id.clone(),
            device: spec.device_id.clone(),
            events: self.events.clone(),
            inner: Arc::downgrade(self),
            sinks: Arc::clone(&self.sinks),
            held_candidates: StdMutex::new(Some(Vec::new())),
            connected: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            first_audio: AtomicBool::new(false),
            first_video: AtomicBool::new(false),
            level: StdMutex::new((0.0, 0)),
            reports,
            video_ssrc,
            plis_sent: AtomicU32::new(0),
            video_recovered: AtomicU32::new(0),
            video_lost: AtomicU32::new(0),
            remote_audio_muted: Arc::clone(&self.remote_audio_muted),
        });
        let pc = PeerConnectionBuilder::new()
            .with_configuration(configuration)
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_setting_engine(settings)
            .with_handler(Arc::new(PeerHandler { shared: Arc::clone(&shared) }))
            .with_udp_addrs(self.config.bind_addrs.clone())
            .build()
            .await?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        let audio = add_track(&pc, local_user, RtpCodecKind::Audio, opus_codec(), audio_ssrc).await;
        let audio = match audio {
            Ok(a) => a,
            Err(e) => {
                let _ = pc.close().await;
                return Err(e);
            }
        };
        let video = match add_track(&pc, local_user, RtpCodecKind::Video, vp8_codec(), video_ssrc).await {
            Ok(v) => v,
            Err(e) => {
                let _ = pc.close().await;
                return Err(e);
            }
        };
        Ok(PeerEntry {
            pc,
            shared,
            audio,
            video,
            audio_target: None,
            video_target: None,
            remote_set: false,
            pending_candidates: Vec::new(),
        })
    }

    /// Sends the offer to a peer this side offers to.
    async fn offer(peer: &PeerEntry) -> Result<(), MediaError> {
        let offer = peer.pc.create_offer(None).await?;
        peer.pc.set_local_description(offer).await?;
        let sdp = peer
            .pc
            .local_description()
            .await
            .ok_or_else(|| MediaError::WebRtc("no local description after set_local_description".into()))?
            .sdp;
        peer.shared.send_signal(MediaPayload::SdpOffer(sdp));
        peer.shared.release_candidates();
        Ok(())
    }

    /// Creates and registers a peer in a call (and offers, if it is our turn).
    async fn add_peer_locked(
        self: &Arc<Self>,
        state: &mut State,
        call_id: &CallId,
        spec: PeerSpec,
    ) -> Result<(), MediaError> {
        let call = state.calls.get(call_id).ok_or_else(|| MediaError::UnknownCall(call_id.clone()))?;
        let (local_user, ice_servers) = (call.local_user.clone(), call.ice_servers.clone());
        let peer = self.new_peer(call_id, &local_user, &ice_servers, &spec).await?;
        if spec.offerer
            && let Err(e) = Self::offer(&peer).await
        {
            let _ = peer.pc.close().await;
            return Err(e);
        }
        let key = (spec.user_id.clone(), spec.device_id.clone());
        if let Some(call) = state.calls.get_mut(call_id) {
            call.peers.insert(key, peer);
        }
        Ok(())
    }

    /// Applies one signal to a known peer.
    async fn apply_signal(
        state: &mut State,
        call_id: &CallId,
        user: &UserId,
        device: &DeviceId,
        payload: MediaPayload,
    ) -> Result<(), MediaError> {
        let key = (user.clone(), device.clone());
        let peer = state.calls.get_mut(call_id).and_then(|c| c.peers.get_mut(&key)).ok_or_else(|| {
            MediaError::UnknownPeer { call_id: call_id.clone(), user: user.clone(), device: device.clone() }
        })?;
        let invalid =
            |reason: String| MediaError::InvalidSignal { user: user.clone(), device: device.clone(), reason };
        match payload {
            MediaPayload::SdpOffer(sdp) => {
                let offer = RTCSessionDescription::offer(sdp).map_err(|e| invalid(e.to_string()))?;
                peer.pc.set_remote_description(offer).await.map_err(|e| invalid(e.to_string()))?;
                peer.remote_set = true;
                flush_candidates(peer).await;
                let answer = peer.pc.create_answer(None).await?;
                peer.pc.set_local_description(answer).await?;
                let sdp = peer
                    .pc
                    .local_description()
                    .await
                    .ok_or_else(|| MediaError::WebRtc("no local description after answer".into()))?
                    .sdp;
                peer.shared.send_signal(MediaPayload::SdpAnswer(sdp));
                peer.shared.release_candidates();
            }
            MediaPayload::SdpAnswer(sdp) => {
                let answer = RTCSessionDescription::answer(sdp).map_err(|e| invalid(e.to_string()))?;
                peer.pc.set_remote_description(answer).await.map_err(|e| invalid(e.to_string()))?;
                peer.remote_set = true;
                flush_candidates(peer).await;
            }
            MediaPayload::IceCandidate { candidate, sdp_mid, sdp_mline_index } => {
                if candidate.is_empty() {
                    return Ok(()); // end-of-candidates
                }
                let init = RTCIceCandidateInit {
                    candidate,
                    sdp_mid: (!sdp_mid.is_empty()).then_some(sdp_mid),
                    sdp_mline_index: Some(
                        u16::try_from(sdp_mline_index)
                            .map_err(|_| invalid("m-line index out of range".into()))?,
                    ),
                    ..Default::default()
                };
                if peer.remote_set {
                    peer.pc.add_ice_candidate(init).await.map_err(|e| invalid(e.to_string()))?;
                } else if peer.pending_candidates.len() < 64 {
                    peer.pending_candidates.push(init);
                }
            }
        }
        Ok(())
    }

    fn mesh_limit(&self, media_type: MediaType) -> usize {
        match media_type {
            MediaType::Audio => self.config.max_mesh_audio,
            MediaType::AudioVideo => self.config.max_mesh_video,
        }
    }

    /// Closes a peer: no more events, its sinks are told the stream ended.
    async fn close_peer(&self, peer: PeerEntry) {
        peer.shared.closed.store(true, Ordering::Release);
        if let Err(e) = peer.pc.close().await {
            tracing::debug!(error = %e, "closing peer connection");
        }
        let mut sinks = lock(&self.sinks);
        for kind in [MediaKind::Audio, MediaKind::Video] {
            if let Some(sink) = sinks.get_mut(&(peer.shared.user.clone(), kind)) {
                sink.on_end();
            }
        }
    }
}

async fn flush_candidates(peer: &mut PeerEntry) {
    for candidate in std::mem::take(&mut peer.pending_candidates) {
        if let Err(e) = peer.pc.add_ice_candidate(candidate).await {
            tracing::debug!(error = %e, "queued remote candidate refused");
        }
    }
}

async fn add_track(
    pc: &Arc<dyn PeerConnection>,
    local_user: &UserId,
    kind: RtpCodecKind,
    codec: RTCRtpCodec,
    ssrc: u32,
) -> Result<LocalTrack, MediaError> {
    let name = match kind {
        RtpCodecKind::Video => "video",
        _ => "audio",
    };
    let track = MediaStreamTrack::new(
        local_user.to_string(),
        format!("{local_user}-{name}"),
        name.to_owned(),
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
            codec,
            ..Default::default()
        }],
    );
    let track = Arc::new(TrackLocalStaticSample::new(Instant::now(), track)?);
    let sender = pc.add_track(Arc::clone(&track) as Arc<dyn TrackLocal>).await?;
    Ok(LocalTrack { track, sender, ssrc })
}

/// A random SSRC, from the std hasher's randomly keyed SipHash (no extra dependency).
fn rand_ssrc() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    (h.finish() as u32).max(1)
}

/// The [`MediaAdapter`] on the `webrtc` crate: peer-to-peer for 1:1 calls, a full mesh for
/// small MULTI calls. Must be created inside a tokio runtime.
pub struct WebRtcMediaAdapter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for WebRtcMediaAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebRtcMediaAdapter").field("config", &self.inner.config).finish()
    }
}

impl WebRtcMediaAdapter {
    /// Creates the adapter and the stream of its events.
    ///
    /// # Panics
    /// Outside a tokio runtime (it spawns its pumps).
    pub fn new(config: WebRtcConfig) -> (Self, MediaEvents) {
        let (events, rx) = mpsc::unbounded_channel();
        let targets = Arc::new(RwLock::new(Targets::default()));
        let local_level = Arc::new(AtomicU8::new(NO_LEVEL));
        let (audio_pump, audio_rx) = mpsc::unbounded_channel();
        let (video_pump, video_rx) = mpsc::unbounded_channel();
        tokio::spawn(pump(MediaKind::Audio, audio_rx, Arc::clone(&targets), Arc::clone(&local_level)));
        tokio::spawn(pump(MediaKind::Video, video_rx, Arc::clone(&targets), Arc::clone(&local_level)));
        let inner = Arc::new(Inner {
            config,
            events,
            state: Mutex::new(State::default()),
            sinks: Arc::new(StdMutex::new(HashMap::new())),
            targets,
            audio_pump,
            video_pump,
            local_level,
            remote_audio_muted: Arc::new(AtomicBool::new(false)),
        });
        (WebRtcMediaAdapter { inner }, MediaEvents::new(rx))
    }

    async fn pump_ack(
        &self,
        pump: &mpsc::UnboundedSender<PumpCmd>,
        make: impl FnOnce(oneshot::Sender<()>) -> PumpCmd,
    ) -> Result<(), MediaError> {
        let (tx, rx) = oneshot::channel();
        pump.send(make(tx)).map_err(|_| MediaError::WebRtc("media pump stopped".into()))?;
        rx.await.map_err(|_| MediaError::WebRtc("media pump stopped".into()))
    }

    fn check_source(source: &dyn MediaSource, kind: MediaKind) -> Result<(), MediaError> {
        if source.kind() == kind {
            Ok(())
        } else {
            Err(MediaError::Config(format!("a {:?} source cannot be used as {kind:?}", source.kind())))
        }
    }
}

impl Drop for WebRtcMediaAdapter {
    fn drop(&mut self) {
        // Connections close when their last handle goes; make sure nothing is reported after.
        if let Ok(state) = self.inner.state.try_lock() {
            for call in state.calls.values() {
                call.stats_task.abort();
                for peer in call.peers.values() {
                    peer.shared.closed.store(true, Ordering::Release);
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl MediaAdapter for WebRtcMediaAdapter {
    async fn start(&self, start: StartMedia) -> Result<(), MediaError> {
        let inner = &self.inner;
        let participants = start.peers.len() + 1;
        let max = inner.mesh_limit(start.media_type);
        if participants > max {
            return Err(MediaError::MeshTooLarge { participants, max });
        }
        for (i, p) in start.peers.iter().enumerate() {
            if p.user_id == start.local_user {
                return Err(MediaError::InvalidPeer(p.user_id.clone(), "is the local user"));
            }
            if start.peers[..i].iter().any(|q| q.user_id == p.user_id && q.device_id == p.device_id) {
                return Err(MediaError::InvalidPeer(p.user_id.clone(), "listed twice"));
            }
        }
        let mut state = inner.state.lock().await;
        if state.calls.contains_key(&start.call_id) {
            return Err(MediaError::CallExists(start.call_id));
        }
        state.ended.retain(|c| *c != start.call_id);
        tracing::info!(call = %start.call_id, peers = start.peers.len(), media = ?start.media_type, "media start");
        let stats_task = tokio::spawn(stats_loop(
            Arc::downgrade(inner),
            start.call_id.clone(),
            inner.config.stats_interval,
        ));
        state.calls.insert(
            start.call_id.clone(),
            CallEntry {
                media_type: start.media_type,
                local_user: start.local_user.clone(),
                local_device: start.local_device.clone(),
                ice_servers: start.ice_servers.clone(),
                peers: HashMap::new(),
                stats_task,
            },
        );
        for spec in start.peers {
            if let Err(e) = inner.add_peer_locked(&mut state, &start.call_id, spec).await {
                if let Some(call) = state.calls.remove(&start.call_id) {
                    call.stats_task.abort();
                    for (_, peer) in call.peers {
                        inner.close_peer(peer).await;
                    }
                }
                return Err(e);
            }
        }
        let pending = state.pending.remove(&start.call_id).unwrap_or_default();
        for signal in pending {
            if let Err(e) =
                Inner::apply_signal(&mut state, &start.call_id, &signal.user, &signal.device, signal.payload)
                    .await
            {
                tracing::warn!(error = %e, "early signal could not be applied");
            }
        }
        Ok(())
    }

    async fn add_peer(&self, call_id: &CallId, peer: PeerSpec) -> Result<(), MediaError> {
        let inner = &self.inner;
        let mut state = inner.state.lock().await;
        let call = state.calls.get(call_id).ok_or_else(|| MediaError::UnknownCall(call_id.clone()))?;
        if peer.user_id == call.local_user {
            return Err(MediaError::InvalidPeer(peer.user_id, "is the local user"));
        }
        let key = (peer.user_id.clone(), peer.device_id.clone());
        if call.peers.contains_key(&key) {
            return Err(MediaError::InvalidPeer(peer.user_id, "listed twice"));
        }
        let participants = call.peers.len() + 2;
        let max = inner.mesh_limit(call.media_type);
        if participants > max {
            return Err(MediaError::MeshTooLarge { participants, max });
        }
        inner.add_peer_locked(&mut state, call_id, peer).await?;
        // Signals this peer sent before we knew it.
        if let Some(queue) = state.pending.get_mut(call_id) {
            let (mine, rest): (Vec<_>, Vec<_>) =
                queue.drain(..).partition(|s| s.user == key.0 && s.device == key.1);
            *queue = rest.into();
            for s in mine {
                if let Err(e) = Inner::apply_signal(&mut state, call_id, &s.user, &s.device, s.payload).await
                {
                    tracing::warn!(error = %e, "early signal could not be applied");
                }
            }
        }
        Ok(())
    }

    async fn remove_peer(
        &self,
        call_id: &CallId,
        user: &UserId,
        device: &DeviceId,
    ) -> Result<(), MediaError> {
        let inner = &self.inner;
        let mut state = inner.state.lock().await;
        let call = state.calls.get_mut(call_id).ok_or_else(|| MediaError::UnknownCall(call_id.clone()))?;
        let peer = call.peers.remove(&(user.clone(), device.clone())).ok_or_else(|| {
            MediaError::UnknownPeer { call_id: call_id.clone(), user: user.clone(), device: device.clone() }
        })?;
        inner.sync_targets(&state, false);
        drop(state);
        inner.close_peer(peer).await;
        Ok(())
    }

    async fn stop(&self, call_id: &CallId) -> Result<(), MediaError> {
        let inner = &self.inner;
        let mut state = inner.state.lock().await;
        state.pending.remove(call_id);
        if !state.ended.contains(call_id) {
            state.ended.push_back(call_id.clone());
            if state.ended.len() > ENDED_MEMORY {
                state.ended.pop_front();
            }
        }
        let call = state.calls.remove(call_id).ok_or_else(|| MediaError::UnknownCall(call_id.clone()))?;
        call.stats_task.abort();
        inner.sync_targets(&state, false);
        drop(state);
        tracing::info!(call = %call_id, device = %call.local_device, "media stop");
        for (_, peer) in call.peers {
            inner.close_peer(peer).await;
        }
        Ok(())
    }

    async fn handle_signal(
        &self,
        call_id: &CallId,
        from_user: &UserId,
        from_device: &DeviceId,
        payload: MediaPayload,
    ) -> Result<(), MediaError> {
        let inner = &self.inner;
        let mut state = inner.state.lock().await;
        if state.ended.contains(call_id) {
            tracing::debug!(call = %call_id, "signal for an ended call dropped");
            return Ok(());
        }
        let known =
            state.calls.get(call_id).map(|c| c.peers.contains_key(&(from_user.clone(), from_device.clone())));
        if known != Some(true) {
            // Media not started yet, or the peer not added yet: keep it for later.
            if !state.pending.contains_key(call_id) && state.pending.len() >= MAX_PENDING_CALLS {
                return Err(MediaError::UnknownCall(call_id.clone()));
            }
            let queue = state.pending.entry(call_id.clone()).or_default();
            if queue.len() >= inner.config.max_pending_signals {
                queue.pop_front();
            }
            queue.push_back(PendingSignal { user: from_user.clone(), device: from_device.clone(), payload });
            return Ok(());
        }
        Inner::apply_signal(&mut state, call_id, from_user, from_device, payload).await
    }

    async fn set_media_type(&self, call_id: &CallId, media_type: MediaType) -> Result<(), MediaError> {
        let inner = &self.inner;
        let mut state = inner.state.lock().await;
        let call = state.calls.get_mut(call_id).ok_or_else(|| MediaError::UnknownCall(call_id.clone()))?;
        let participants = call.peers.len() + 1;
        let max = inner.mesh_limit(media_type);
        if participants > max {
            return Err(MediaError::MeshTooLarge { participants, max });
        }
        call.media_type = media_type;
        inner.sync_targets(&state, media_type == MediaType::AudioVideo);
        Ok(())
    }

    async fn set_camera_enabled(&self, enabled: bool) -> Result<(), MediaError> {
        self.pump_ack(&self.inner.video_pump, |ack| PumpCmd::Enabled(enabled, ack)).await
    }

    async fn set_microphone_enabled(&self, enabled: bool) -> Result<(), MediaError> {
        self.pump_ack(&self.inner.audio_pump, |ack| PumpCmd::Enabled(enabled, ack)).await
    }

    async fn switch_camera(&self, source: Box<dyn MediaSource>) -> Result<(), MediaError> {
        Self::check_source(source.as_ref(), MediaKind::Video)?;
        self.pump_ack(&self.inner.video_pump, |ack| PumpCmd::Source(source, ack)).await
    }

    async fn switch_microphone(&self, source: Box<dyn MediaSource>) -> Result<(), MediaError> {
        Self::check_source(source.as_ref(), MediaKind::Audio)?;
        self.pump_ack(&self.inner.audio_pump, |ack| PumpCmd::Source(source, ack)).await
    }

    async fn apply_video_config(&self, config: VideoConfig) -> Result<(), MediaError> {
        self.inner
            .video_pump
            .send(PumpCmd::Video(config))
            .map_err(|_| MediaError::WebRtc("media pump stopped".into()))
    }

    async fn apply_audio_config(&self, config: AudioConfig) -> Result<(), MediaError> {
        self.inner
            .audio_pump
            .send(PumpCmd::Audio(config))
            .map_err(|_| MediaError::WebRtc("media pump stopped".into()))
    }

    fn set_sink(&self, user: UserId, kind: MediaKind, sink: Box<dyn MediaSink>) {
        if let Some(mut old) = lock(&self.inner.sinks).insert((user, kind), sink) {
            old.on_end();
        }
    }

    fn remove_sink(&self, user: &UserId, kind: MediaKind) {
        if let Some(mut old) = lock(&self.inner.sinks).remove(&(user.clone(), kind)) {
            old.on_end();
        }
    }

    fn set_remote_audio_muted(&self, muted: bool) {
        self.inner.remote_audio_muted.store(muted, Ordering::Release);
    }

    fn remote_audio_muted(&self) -> bool {
        self.inner.remote_audio_muted.load(Ordering::Acquire)
    }
}
