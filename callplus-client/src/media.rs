//! Media glue: drives a [`MediaAdapter`] from the client's call events, so that accepting a call
//! makes audio (and video) flow with no further app code.
//!
//! With [`ClientOptions::media`](super::ClientOptions::media) set, the client owns a
//! [`WebRtcMediaAdapter`] and one background task (the *glue*) that:
//!
//! - on `CallConnected` resolves the other participants that are ON_CALL and the device each
//!   answered on (from the session, else one `get_call`), hands fresh sources to the adapter,
//!   sets the app's sinks for those users and calls [`MediaAdapter::start`] (who offers follows
//!   [`callplus_media::should_offer`]);
//! - relays SDP/ICE: the adapter's `Signal`s go out with `send_media_signal` (in order), inbound
//!   `MediaSignal`s go to [`MediaAdapter::handle_signal`] (they are consumed: they do not
//!   appear on the app's [`EventStream`](super::EventStream));
//! - adds/removes peers as participants of a MULTI call reach ON_CALL or leave;
//! - applies an accepted media-type change ([`MediaAdapter::set_media_type`]);
//! - stops the call's media on `CallEnded` (sinks are told the stream ended and are dropped);
//! - reports the first remote frame of each call to the server (`report_first_frame`), which
//!   stamps the call's `first_frame_at_ms` and sends `CallFirstFrameTime` to everyone;
//! - hands everything else the adapter reports (first frames, stats, audio levels, remote
//!   media available, errors) to the app's [`MediaEventStream`].
//!
//! The glue and the app's camera/microphone switches share one ordered queue, so a mute the app
//! asks for after seeing `CallConnected` always lands after the call's media started (each new
//! call starts with camera and microphone on, as the server assumes).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};

use callplus_media::{
    AudioConfig, IvfSink, MediaAdapter, MediaError, MediaEvent, MediaEvents, MediaSink, MediaSource,
    OggOpusSink, PeerSpec, StartMedia, TestPatternSource, ToneSource, VideoConfig, WebRtcConfig,
    WebRtcMediaAdapter,
};
use callplus_session::client::{CallSession, ClientEvent};
use callplus_session::{
    CallId, CallInfo, DeviceId, IceServer, MediaKind, MediaType, ParticipantState, UserId,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{Client, Inner, Snapshot};

/// Makes a fresh local source for each call (a microphone or a camera).
pub type SourceFactory = Arc<dyn Fn() -> Result<Box<dyn MediaSource>, MediaError> + Send + Sync>;

/// Makes the sink for a remote user's audio or video in a call; `None` drops that media.
pub type SinkFactory = Arc<dyn Fn(&CallId, &UserId, MediaKind) -> Option<Box<dyn MediaSink>> + Send + Sync>;

/// Media settings of a [`Client`](super::Client): with them, the client sets up WebRTC media by
/// itself for every call it is connected in.
#[derive(Clone)]
pub struct MediaOptions {
    /// The WebRTC backend's settings (ICE bind addresses, mesh limits, stats period).
    pub webrtc: WebRtcConfig,
    /// STUN/TURN servers; `None` uses the ones the signalling server announces in its Welcome.
    pub ice_servers: Option<Vec<IceServer>>,
    /// The microphone: called once per call for a fresh source. `None` sends no audio.
    pub microphone: Option<SourceFactory>,
    /// The camera: called once per video call (or when a call becomes AUDIO_VIDEO). `None`
    /// sends no video.
    pub camera: Option<SourceFactory>,
    /// Where remote media goes, per remote user and kind (called once per call and user; the
    /// video sink only in AUDIO_VIDEO calls). `None` receives but delivers nothing.
    pub sinks: Option<SinkFactory>,
    /// Media events kept for the app before it reads them; when full, the newest are dropped.
    pub event_capacity: usize,
}

impl std::fmt::Debug for MediaOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaOptions")
            .field("webrtc", &self.webrtc)
            .field("ice_servers", &self.ice_servers)
            .field("microphone", &self.microphone.is_some())
            .field("camera", &self.camera.is_some())
            .field("sinks", &self.sinks.is_some())
            .field("event_capacity", &self.event_capacity)
            .finish()
    }
}

impl Default for MediaOptions {
    fn default() -> Self {
        MediaOptions::new(WebRtcConfig::default())
    }
}

impl MediaOptions {
    /// Media with this backend config, no sources and no sinks.
    pub fn new(webrtc: WebRtcConfig) -> Self {
        MediaOptions {
            webrtc,
            ice_servers: None,
            microphone: None,
            camera: None,
            sinks: None,
            event_capacity: 1024,
        }
    }

    /// [`MediaOptions::new`] with [`WebRtcConfig::loopback`] (ICE on 127.0.0.1 only: tests,
    /// same-host calls).
    pub fn loopback() -> Self {
        MediaOptions::new(WebRtcConfig::loopback())
    }

    /// Uses these STUN/TURN servers instead of the server's.
    pub fn with_ice_servers(mut self, servers: Vec<IceServer>) -> Self {
        self.ice_servers = Some(servers);
        self
    }

    /// The microphone factory.
    pub fn with_microphone(
        mut self,
        factory: impl Fn() -> Result<Box<dyn MediaSource>, MediaError> + Send + Sync + 'static,
    ) -> Self {
        self.microphone = Some(Arc::new(factory));
        self
    }

    /// The camera factory.
    pub fn with_camera(
        mut self,
        factory: impl Fn() -> Result<Box<dyn MediaSource>, MediaError> + Send + Sync + 'static,
    ) -> Self {
        self.camera = Some(Arc::new(factory));
        self
    }

    /// The sink factory.
    pub fn with_sinks(
        mut self,
        factory: impl Fn(&UserId, MediaKind) -> Option<Box<dyn MediaSink>> + Send + Sync + 'static,
    ) -> Self {
        self.sinks = Some(Arc::new(move |_call: &CallId, user: &UserId, kind| factory(user, kind)));
        self
    }

    /// A sink factory that is also told the call the sink is for: for apps that keep several
    /// calls' media apart (a C app's frame callback names the call). Replaces
    /// [`MediaOptions::with_sinks`]'s factory, as that one replaces this.
    pub fn with_call_sinks(
        mut self,
        factory: impl Fn(&CallId, &UserId, MediaKind) -> Option<Box<dyn MediaSink>> + Send + Sync + 'static,
    ) -> Self {
        self.sinks = Some(Arc::new(factory));
        self
    }

    /// A microphone that sends a sine tone of `frequency` Hz at half scale ([`ToneSource`]).
    pub fn with_tone(self, frequency: f64) -> Self {
        self.with_microphone(move || {
            Ok(Box::new(ToneSource::new(frequency, 0.5, AudioConfig::default())?) as Box<dyn MediaSource>)
        })
    }

    /// A camera that sends a moving VP8 test pattern ([`TestPatternSource`]).
    pub fn with_test_pattern(self, config: VideoConfig) -> Self {
        self.with_camera(move || Ok(Box::new(TestPatternSource::new(config)?) as Box<dyn MediaSource>))
    }

    /// Records every remote user's audio to `DIR/<user>.ogg` and video to `DIR/<user>.ivf`
    /// (see [`record_sink`]).
    pub fn with_recording(self, dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        self.with_sinks(move |user, kind| match record_sink(&dir, user, kind) {
            Ok(sink) => Some(sink),
            Err(e) => {
                tracing::warn!(%user, ?kind, error = %e, "cannot create the recording");
                None
            }
        })
    }
}

/// A file sink for `user`'s media of `kind` in `dir`: `<user>.ogg` (Ogg Opus) for audio,
/// `<user>.ivf` (VP8) for video. An existing file is replaced.
///
/// # Errors
/// The file cannot be created.
pub fn record_sink(dir: &Path, user: &UserId, kind: MediaKind) -> std::io::Result<Box<dyn MediaSink>> {
    Ok(match kind {
        MediaKind::Audio => Box::new(OggOpusSink::create(dir.join(format!("{user}.ogg")))?),
        MediaKind::Video => Box::new(IvfSink::create(dir.join(format!("{user}.ivf")))?),
    })
}

/// The media events of one [`Client`](super::Client) (taken once with
/// [`Client::media_events`](super::Client::media_events)): remote media available, first
/// frames, the once-a-second status reports, audio levels, errors. Signalling messages
/// (`MediaEvent::Signal`) are handled by the client and never appear here.
///
/// Ends (yields `None`) after the client has stopped. Also a [`futures_core::Stream`].
#[derive(Debug)]
pub struct MediaEventStream {
    rx: mpsc::Receiver<MediaEvent>,
}

impl MediaEventStream {
    /// The next event; `None` once the client has stopped and every event was taken.
    pub async fn next(&mut self) -> Option<MediaEvent> {
        self.rx.recv().await
    }

    /// The next event if one is waiting.
    pub fn try_next(&mut self) -> Option<MediaEvent> {
        self.rx.try_recv().ok()
    }
}

impl futures_core::Stream for MediaEventStream {
    type Item = MediaEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<MediaEvent>> {
        self.rx.poll_recv(cx)
    }
}

/// A one-line description of a media event, e.g. `call c_1: stats rtt 1 ms, bob 0.0 % loss 41 kbps`.
pub fn describe_media_event(event: &MediaEvent) -> String {
    match event {
        MediaEvent::Signal { call_id, to_user, to_device, .. } => {
            format!("call {call_id}: media signal to {to_user}/{to_device}")
        }
        MediaEvent::PeerConnected { call_id, user, device } => {
            format!("call {call_id}: media connected with {user}/{device}")
        }
        MediaEvent::UserMediaAvailable { call_id, user, kind } => {
            format!("call {call_id}: {} of {user} available", kind_name(*kind))
        }
        MediaEvent::FirstFrame { call_id, user, kind, at_ms } => {
            format!("call {call_id}: first {} frame from {user} at {at_ms} ms", kind_name(*kind))
        }
        MediaEvent::Stats(stats) => {
            let rtt = stats.rtt_ms.map_or_else(|| "-".to_owned(), |r| format!("{r:.0} ms"));
            let peers: Vec<String> = stats
                .per_peer
                .iter()
                .map(|p| format!("{} {:.1} % loss {:.0} kbps", p.user, p.recv_loss_pct, p.bitrate_kbps))
                .collect();
            format!(
                "call {}: stats send loss {:.1} %, rtt {rtt}; {}",
                stats.call_id,
                stats.send_loss_pct,
                if peers.is_empty() { "no peer connected".to_owned() } else { peers.join(", ") }
            )
        }
        MediaEvent::AudioLevel { call_id, user, level } => {
            format!("call {call_id}: {user} audio level {level}")
        }
        MediaEvent::FetchRemoteMediaError { call_id, user, code } => {
            format!("call {call_id}: media of {user} failed: {code:?}")
        }
        MediaEvent::Error { call_id: Some(call_id), message } => {
            format!("call {call_id}: media error: {message}")
        }
        MediaEvent::Error { call_id: None, message } => format!("media error: {message}"),
        other => format!("{other:?}"),
    }
}

fn kind_name(kind: MediaKind) -> &'static str {
    match kind {
        MediaKind::Audio => "audio",
        MediaKind::Video => "video",
    }
}

/// What the glue task is told, in one ordered queue.
pub(super) enum GlueInput {
    /// A call event from the driver (sent before the app sees it).
    Call(Box<ClientEvent>),
    /// The app turns a local device on or off.
    Device { kind: MediaKind, enabled: bool, done: oneshot::Sender<()> },
}

/// The client's handle on its media: the adapter, the app's event stream (until taken), the
/// glue's queue and task.
pub(super) struct MediaHandle {
    pub(super) adapter: Arc<WebRtcMediaAdapter>,
    events: Mutex<Option<MediaEventStream>>,
    /// Weak: the driver holds the strong sender, so the glue ends when the driver does.
    input: mpsc::WeakUnboundedSender<GlueInput>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl MediaHandle {
    pub(super) fn take_events(&self) -> Option<MediaEventStream> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    /// Turns a local device on or off once the glue has handled everything queued before.
    pub(super) async fn set_device(&self, kind: MediaKind, enabled: bool) {
        let (done, wait) = oneshot::channel();
        match self.input.upgrade() {
            Some(tx) if tx.send(GlueInput::Device { kind, enabled, done }).is_ok() => {
                drop(tx);
                let _ = wait.await;
            }
            // No glue any more (the client stopped): switch the adapter directly.
            _ => {
                let _ = match kind {
                    MediaKind::Audio => self.adapter.set_microphone_enabled(enabled).await,
                    MediaKind::Video => self.adapter.set_camera_enabled(enabled).await,
                };
            }
        }
    }

    /// Waits for the glue to stop every call's media (after the driver ended).
    pub(super) async fn finished(&self) {
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// The media set up before the client connects: the adapter, its events, the glue's queue.
pub(super) struct MediaSetup {
    options: MediaOptions,
    adapter: Arc<WebRtcMediaAdapter>,
    media_events: MediaEvents,
    input_tx: mpsc::UnboundedSender<GlueInput>,
    input_rx: mpsc::UnboundedReceiver<GlueInput>,
}

impl MediaSetup {
    /// Creates the adapter (inside the runtime) and the glue's queue.
    pub(super) fn new(options: MediaOptions) -> Self {
        let (adapter, media_events) = WebRtcMediaAdapter::new(options.webrtc.clone());
        let (input_tx, input_rx) = mpsc::unbounded_channel();
        MediaSetup { options, adapter: Arc::new(adapter), media_events, input_tx, input_rx }
    }

    /// The driver's tap: forwards the call events the glue needs (before the app sees them)
    /// and says whether the app should not see it (inbound media signals).
    pub(super) fn tap(&self) -> super::driver::MediaTap {
        let tx = self.input_tx.clone();
        Box::new(move |event: &ClientEvent| {
            let (wanted, consumed) = match event {
                ClientEvent::MediaSignal { .. } => (true, true),
                ClientEvent::CallConnected { .. }
                | ClientEvent::CallEnded { .. }
                | ClientEvent::RemoteUserStateChanged { .. }
                | ClientEvent::ChangeMediaTypeResult { .. } => (true, false),
                _ => (false, false),
            };
            if wanted {
                let _ = tx.send(GlueInput::Call(Box::new(event.clone())));
            }
            consumed
        })
    }

    /// The client's handle, and the glue to start once the client exists.
    pub(super) fn split(self, snapshot: Arc<Mutex<Snapshot>>, device: DeviceId) -> (MediaHandle, GlueTask) {
        let MediaSetup { options, adapter, media_events, input_tx, input_rx } = self;
        let (events_tx, events_rx) = mpsc::channel(options.event_capacity.max(1));
        let weak_input = input_tx.downgrade();
        // The only strong sender left is the driver's tap: the queue closes when it ends.
        drop(input_tx);
        let glue = Glue {
            adapter: Arc::clone(&adapter) as Arc<dyn MediaAdapter>,
            options,
            client: Weak::new(),
            snapshot,
            device,
            events: events_tx,
            calls: HashMap::new(),
        };
        let handle = MediaHandle {
            adapter,
            events: Mutex::new(Some(MediaEventStream { rx: events_rx })),
            input: weak_input,
            task: Mutex::new(None),
        };
        (handle, GlueTask { glue, input: input_rx, media: media_events })
    }
}

/// The glue, ready to run.
pub(super) struct GlueTask {
    glue: Glue,
    input: mpsc::UnboundedReceiver<GlueInput>,
    media: MediaEvents,
}

impl GlueTask {
    /// Runs the glue for `client` (whose handle is `handle`).
    pub(super) fn spawn(self, client: &Arc<Inner>, handle: &MediaHandle) {
        let GlueTask { mut glue, input, media } = self;
        glue.client = Arc::downgrade(client);
        let task = tokio::spawn(glue.run(input, media));
        *handle.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
    }
}

/// The glue's view of one call whose media runs.
struct CallMedia {
    local_user: UserId,
    media_type: MediaType,
    /// Remote users with media, and the device each is in the call on.
    peers: HashMap<UserId, DeviceId>,
    /// The camera source and video sinks were set up.
    video: bool,
    first_frame_reported: bool,
}

struct Glue {
    adapter: Arc<dyn MediaAdapter>,
    options: MediaOptions,
    client: Weak<Inner>,
    snapshot: Arc<Mutex<Snapshot>>,
    device: DeviceId,
    events: mpsc::Sender<MediaEvent>,
    calls: HashMap<CallId, CallMedia>,
}

impl Glue {
    async fn run(mut self, mut input: mpsc::UnboundedReceiver<GlueInput>, mut media: MediaEvents) {
        let mut media_open = true;
        loop {
            tokio::select! {
                got = input.recv() => match got {
                    Some(GlueInput::Call(event)) => self.on_call_event(*event).await,
                    Some(GlueInput::Device { kind, enabled, done }) => {
                        self.set_device(kind, enabled).await;
                        let _ = done.send(());
                    }
                    None => break,
                },
                got = media.recv(), if media_open => match got {
                    Some(event) => self.on_media_event(event),
                    None => media_open = false,
                },
            }
        }
        // The client stopped: no call goes on.
        let ids: Vec<CallId> = self.calls.keys().cloned().collect();
        for id in ids {
            self.stop(&id).await;
        }
        tracing::debug!("media glue ends");
    }

    fn client(&self) -> Option<Client> {
        self.client.upgrade().map(|inner| Client { inner })
    }

    /// Hands an event to the app (dropped when the app does not keep up).
    fn emit(&self, event: MediaEvent) {
        if let Err(mpsc::error::TrySendError::Full(event)) = self.events.try_send(event) {
            tracing::debug!(?event, "media event dropped: the app does not read its media events");
        }
    }

    fn error(&self, call_id: Option<&CallId>, message: String) {
        tracing::warn!(call = ?call_id, %message, "media");
        self.emit(MediaEvent::Error { call_id: call_id.cloned(), message });
    }

    async fn set_device(&self, kind: MediaKind, enabled: bool) {
        let result = match kind {
            MediaKind::Audio => self.adapter.set_microphone_enabled(enabled).await,
            MediaKind::Video => self.adapter.set_camera_enabled(enabled).await,
        };
        if let Err(e) = result {
            self.error(None, format!("cannot turn the {} {}: {e}", device_name(kind), on_off(enabled)));
        }
    }

    async fn on_call_event(&mut self, event: ClientEvent) {
        match event {
            ClientEvent::CallConnected { session } => self.on_connected(&session).await,
            ClientEvent::CallEnded { session, .. } => self.stop(session.call_id()).await,
            ClientEvent::MediaSignal { call_id, from_user, from_device, payload } => {
                // Before `start` (or before the peer is added) the adapter keeps it for later.
                if let Err(e) = self.adapter.handle_signal(&call_id, &from_user, &from_device, payload).await
                {
                    tracing::debug!(call = %call_id, from = %from_user, error = %e, "media signal refused");
                }
            }
            ClientEvent::RemoteUserStateChanged { call_id, user_id, state, .. } => {
                self.on_remote_state(&call_id, user_id, state).await;
            }
            ClientEvent::ChangeMediaTypeResult { call_id, media_type, .. } => {
                self.on_media_type(&call_id, media_type).await;
            }
            _ => {}
        }
    }

    async fn on_connected(&mut self, session: &CallSession) {
        let call_id = session.call_id().clone();
        if self.calls.contains_key(&call_id) {
            return;
        }
        let local_user = session.local_user().clone();
        let peers = self.resolve_peers(session).await;
        let media_type = session.media_type();
        tracing::info!(call = %call_id, peers = peers.len(), ?media_type, "starting media");
        // A new call starts with camera and microphone on, as the server assumes.
        self.set_device(MediaKind::Audio, true).await;
        self.set_device(MediaKind::Video, true).await;
        if let Some(factory) = self.options.microphone.clone() {
            match factory() {
                Ok(source) => {
                    if let Err(e) = self.adapter.switch_microphone(source).await {
                        self.error(Some(&call_id), format!("microphone: {e}"));
                    }
                }
                Err(e) => self.error(Some(&call_id), format!("cannot open the microphone: {e}")),
            }
        }
        let mut call = CallMedia {
            local_user: local_user.clone(),
            media_type,
            peers: HashMap::new(),
            video: false,
            first_frame_reported: false,
        };
        if media_type == MediaType::AudioVideo {
            self.enable_video(&call_id, &mut call).await;
        }
        let mut specs = Vec::with_capacity(peers.len());
        for (user, device) in peers {
            self.attach_sinks(&call_id, &user, call.video);
            specs.push(PeerSpec::new(&local_user, &self.device, user.clone(), device.clone()));
            call.peers.insert(user, device);
        }
        let ice_servers = match &self.options.ice_servers {
            Some(servers) => servers.clone(),
            None => self.snapshot.lock().unwrap_or_else(PoisonError::into_inner).ice_servers.clone(),
        };
        let start = StartMedia {
            call_id: call_id.clone(),
            local_user,
            local_device: self.device.clone(),
            peers: specs,
            media_type,
            ice_servers,
        };
        match self.adapter.start(start).await {
            Ok(()) => {
                self.calls.insert(call_id, call);
            }
            Err(e) => {
                for user in call.peers.keys() {
                    self.detach_sinks(user);
                }
                self.error(Some(&call_id), format!("cannot start media: {e}"));
            }
        }
    }

    /// The other participants that are ON_CALL, with their devices: from the session when it
    /// names every device (the callee's view of a 1:1 call), else from the server's snapshot.
    async fn resolve_peers(&self, session: &CallSession) -> Vec<(UserId, DeviceId)> {
        if session.call_type() == callplus_session::CallType::Single {
            // This device is connected, so is the other side of a 1:1 call (the caller may
            // still read CONNECTING in the callee's copy); the callee's copy names its device.
            let mut remote = session.remote_participants().filter(|p| p.state.is_connected());
            if let (Some(peer), None) = (remote.next(), remote.next())
                && let Some(device) = &peer.device_id
            {
                return vec![(peer.user_id.clone(), device.clone())];
            }
        }
        let on_call: Vec<_> =
            session.remote_participants().filter(|p| p.state == ParticipantState::OnCall).collect();
        match self.get_call(session.call_id()).await {
            Some(info) => peers_in(&info, session.local_user()),
            None => on_call.iter().filter_map(|p| Some((p.user_id.clone(), p.device_id.clone()?))).collect(),
        }
    }

    async fn get_call(&self, call_id: &CallId) -> Option<CallInfo> {
        let client = self.client()?;
        match client.get_call(call_id).await {
            Ok(info) => Some(info),
            Err(e) => {
                tracing::warn!(call = %call_id, error = %e, "cannot fetch the call's participants");
                None
            }
        }
    }

    /// Camera source and video sinks, once per call.
    async fn enable_video(&self, call_id: &CallId, call: &mut CallMedia) {
        if call.video {
            return;
        }
        call.video = true;
        if let Some(factory) = self.options.camera.clone() {
            match factory() {
                Ok(source) => {
                    if let Err(e) = self.adapter.switch_camera(source).await {
                        self.error(Some(call_id), format!("camera: {e}"));
                    }
                }
                Err(e) => self.error(Some(call_id), format!("cannot open the camera: {e}")),
            }
        }
    }

    fn attach_sinks(&self, call_id: &CallId, user: &UserId, video: bool) {
        let kinds: &[MediaKind] =
            if video { &[MediaKind::Audio, MediaKind::Video] } else { &[MediaKind::Audio] };
        for &kind in kinds {
            self.attach_sink(call_id, user, kind);
        }
    }

    /// Asks the app's factory for one sink and hands it to the adapter.
    fn attach_sink(&self, call_id: &CallId, user: &UserId, kind: MediaKind) {
        if let Some(sink) = self.options.sinks.as_ref().and_then(|factory| factory(call_id, user, kind)) {
            self.adapter.set_sink(user.clone(), kind, sink);
        }
    }

    fn detach_sinks(&self, user: &UserId) {
        if self.options.sinks.is_some() {
            self.adapter.remove_sink(user, MediaKind::Audio);
            self.adapter.remove_sink(user, MediaKind::Video);
        }
    }

    async fn stop(&mut self, call_id: &CallId) {
        // Also for calls whose media never started: early signals buffered for it are dropped.
        let result = self.adapter.stop(call_id).await;
        let Some(call) = self.calls.remove(call_id) else { return };
        tracing::info!(call = %call_id, "media stopped");
        if let Err(e) = result {
            tracing::debug!(call = %call_id, error = %e, "stopping media");
        }
        for user in call.peers.keys() {
            self.detach_sinks(user);
        }
    }

    async fn on_remote_state(&mut self, call_id: &CallId, user: UserId, state: ParticipantState) {
        let Some(call) = self.calls.get(call_id) else { return };
        let known = call.peers.get(&user).cloned();
        match (state, known) {
            (ParticipantState::OnCall, None) => {
                // Joined: find the device it answered on.
                let Some(info) = self.get_call(call_id).await else { return };
                let local_user = call.local_user.clone();
                let Some((_, device)) = peers_in(&info, &local_user).into_iter().find(|(u, _)| *u == user)
                else {
                    return;
                };
                let Some(call) = self.calls.get_mut(call_id) else { return };
                if call.peers.contains_key(&user) {
                    return;
                }
                let video = call.video;
                call.peers.insert(user.clone(), device.clone());
                self.attach_sinks(call_id, &user, video);
                let spec = PeerSpec::new(&local_user, &self.device, user.clone(), device);
                if let Err(e) = self.adapter.add_peer(call_id, spec).await {
                    if let Some(call) = self.calls.get_mut(call_id) {
                        call.peers.remove(&user);
                    }
                    self.detach_sinks(&user);
                    self.error(Some(call_id), format!("cannot add {user} to the media: {e}"));
                }
            }
            (ParticipantState::OnCall, Some(_)) | (_, None) => {}
            (_, Some(device)) => {
                // Left (or no longer connected).
                if let Some(call) = self.calls.get_mut(call_id) {
                    call.peers.remove(&user);
                }
                if let Err(e) = self.adapter.remove_peer(call_id, &user, &device).await {
                    tracing::debug!(call = %call_id, %user, error = %e, "removing a media peer");
                }
                self.detach_sinks(&user);
            }
        }
    }

    async fn on_media_type(&mut self, call_id: &CallId, media_type: MediaType) {
        let Some(mut call) = self.calls.remove(call_id) else { return };
        if call.media_type != media_type {
            if media_type == MediaType::AudioVideo && !call.video {
                self.enable_video(call_id, &mut call).await;
                for user in call.peers.keys() {
                    self.attach_sink(call_id, user, MediaKind::Video);
                }
            }
            match self.adapter.set_media_type(call_id, media_type).await {
                Ok(()) => call.media_type = media_type,
                Err(e) => self.error(Some(call_id), format!("cannot switch the media type: {e}")),
            }
        }
        self.calls.insert(call_id.clone(), call);
    }

    fn on_media_event(&mut self, event: MediaEvent) {
        match event {
            MediaEvent::Signal { call_id, to_user, to_device, payload } => {
                let Some(client) = self.client() else { return };
                let (c, u, d) = (call_id.clone(), to_user.clone(), to_device.clone());
                // Queued now, in order (an offer or answer before its candidates).
                let sent = client.submit(move |e, now| e.send_media_signal(now, &c, &u, &d, payload));
                tokio::spawn(async move {
                    if let Err(e) = sent.await {
                        tracing::debug!(call = %call_id, to = %to_user, error = %e, "media signal not relayed");
                    }
                });
            }
            MediaEvent::FirstFrame { ref call_id, .. } => {
                if let Some(call) = self.calls.get_mut(call_id)
                    && !call.first_frame_reported
                {
                    call.first_frame_reported = true;
                    if let Some(client) = self.client() {
                        let id = call_id.clone();
                        let sent = client.submit(move |e, now| e.report_first_frame(now, &id));
                        let id = call_id.clone();
                        tokio::spawn(async move {
                            if let Err(e) = sent.await {
                                tracing::debug!(call = %id, error = %e, "first frame not reported");
                            }
                        });
                    }
                }
                self.emit(event);
            }
            other => self.emit(other),
        }
    }
}

/// The ON_CALL participants of `info` other than `me`, with their devices.
fn peers_in(info: &CallInfo, me: &UserId) -> Vec<(UserId, DeviceId)> {
    info.participants
        .iter()
        .filter(|p| &p.user_id != me && p.state == ParticipantState::OnCall)
        .filter_map(|p| Some((p.user_id.clone(), p.device_id.clone()?)))
        .collect()
}

fn device_name(kind: MediaKind) -> &'static str {
    match kind {
        MediaKind::Audio => "microphone",
        MediaKind::Video => "camera",
    }
}

fn on_off(enabled: bool) -> &'static str {
    if enabled { "on" } else { "off" }
}
