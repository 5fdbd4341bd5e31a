//! [`WebRtcMediaAdapter`]: the [`MediaAdapter`] on the `webrtc` crate (0.21, sans-IO `rtc` core).
//!
//! Layout:
//! - one `PeerConnection` per remote device of a call (full mesh), or one to the SFU whose
//!   remote tracks carry every other user's media (told apart by stream id); each with one Opus and one
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
//! - through the SFU, our video goes out in two simulcast layers (full and tiny), and a data
//!   channel on the SFU connection carries which layer this device wants of each user's video,
//!   and from the SFU the users' audio levels and the active speaker (`sfu_levels`);
//! - one stats task per call turns `get_stats` into the once-a-second
//!   [`MediaStats`](crate::adapter::MediaStats).
//!
//! This file holds the adapter, its settings and the state its parts share; `peer` the peer
//! connections, `send` the pumps, `receive` the receive tasks, `stats` the stats task and
//! `codecs` the codecs and interceptors every peer connection is built with.

mod codecs;
mod peer;
mod receive;
mod send;
mod sfu_levels;
mod stats;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex as StdMutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use callplus_session::{CallId, DeviceId, IceServer, MediaKind, MediaPayload, MediaType, UserId};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::adapter::{MediaAdapter, MediaEvent, MediaEvents, PeerSpec, StartMedia};
use crate::error::MediaError;
use crate::sink::MediaSink;
use crate::source::{AudioConfig, MediaSource, VideoConfig};
use peer::PeerEntry;
use send::{PumpCmd, Targets, pump};
use stats::stats_loop;

/// The payload type offered for VP8 (the relay of the `test-support` feature looks for it).
#[cfg(feature = "test-support")]
pub(crate) use codecs::VP8_PT;

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
    /// Through an SFU, send video in two simulcast layers (full and tiny) so that viewers can
    /// choose the tiny one (default). Off, one layer is sent, as in a mesh: every viewer gets the
    /// full picture and the device runs one video encoder instead of two (a weak device, or an
    /// app that never shows small views).
    pub simulcast: bool,
}

impl Default for WebRtcConfig {
    fn default() -> Self {
        WebRtcConfig {
            bind_addrs: vec!["0.0.0.0:0".to_owned()],
            max_mesh_video: 4,
            max_mesh_audio: 8,
            stats_interval: Duration::from_secs(1),
            max_pending_signals: 256,
            simulcast: true,
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

struct CallEntry {
    media_type: MediaType,
    /// Through an SFU: the SFU's signalling address, the call's only connection.
    sfu: Option<PeerKey>,
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
    /// The layer chosen per remote user's video (`true`: tiny); absent users get the full one.
    /// Sent to the SFU of every call that goes through one.
    video_views: StdMutex<HashMap<UserId, bool>>,
}

const NO_LEVEL: u8 = u8::MAX;

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data behind: keep going.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
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
            video_views: StdMutex::new(HashMap::new()),
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
        if start.sfu.is_none() && participants > max {
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
        tracing::info!(call = %start.call_id, peers = start.peers.len(), media = ?start.media_type, sfu = start.sfu.is_some(), "media start");
        let stats_task = tokio::spawn(stats_loop(
            Arc::downgrade(inner),
            start.call_id.clone(),
            inner.config.stats_interval,
        ));
        state.calls.insert(
            start.call_id.clone(),
            CallEntry {
                media_type: start.media_type,
                sfu: start.sfu.as_ref().map(|r| (r.user_id.clone(), r.device_id.clone())),
                local_user: start.local_user.clone(),
                local_device: start.local_device.clone(),
                ice_servers: start.ice_servers.clone(),
                peers: HashMap::new(),
                stats_task,
            },
        );
        // One connection to the SFU, which we offer to; else one per peer.
        let connections: Vec<(PeerSpec, Option<String>)> = match start.sfu {
            Some(route) => vec![(
                PeerSpec { user_id: route.user_id, device_id: route.device_id, offerer: true },
                Some(route.token),
            )],
            None => start.peers.into_iter().map(|spec| (spec, None)).collect(),
        };
        for (spec, token) in connections {
            if let Err(e) = inner.add_peer_locked(&mut state, &start.call_id, spec, token).await {
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
        if call.sfu.is_some() {
            // The SFU offers the newcomer's tracks on the connection we have.
            return Ok(());
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
        inner.add_peer_locked(&mut state, call_id, peer, None).await?;
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
        if call.sfu.as_ref().is_some_and(|sfu| sfu.0 != *user || sfu.1 != *device) {
            // The SFU stops forwarding a participant that left; our connection stays.
            return Ok(());
        }
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
        if call.sfu.is_none() && participants > max {
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

    async fn set_video_tiny(&self, user: &UserId, tiny: bool) {
        lock(&self.inner.video_views).insert(user.clone(), tiny);
        let connections: Vec<Arc<peer::PeerShared>> = {
            let state = self.inner.state.lock().await;
            state
                .calls
                .values()
                .filter(|call| call.sfu.is_some())
                .flat_map(|call| call.peers.values().map(|peer| Arc::clone(&peer.shared)))
                .collect()
        };
        for shared in connections {
            shared.send_video_view(user, tiny).await;
        }
    }

    fn set_remote_audio_muted(&self, muted: bool) {
        self.inner.remote_audio_muted.store(muted, Ordering::Release);
    }

    fn remote_audio_muted(&self) -> bool {
        self.inner.remote_audio_muted.load(Ordering::Acquire)
    }
}
