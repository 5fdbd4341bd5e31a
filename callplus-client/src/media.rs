//! Media glue: executes the client engine's media commands on a [`MediaAdapter`], so that
//! accepting a call makes audio (and video) flow with no further app code.
//!
//! With [`ClientOptions::media`](super::ClientOptions::media) set, the client owns a
//! [`WebRtcMediaAdapter`] and one background task (the *glue*). The engine decides everything
//! (`callplus_session::client::MediaCommand`: which devices, who offers, when to start, add,
//! remove, switch type, apply a peer's SDP/ICE, switch a device, stop); the glue only carries
//! the commands out, in order:
//!
//! - `Start`: switches microphone and camera as told, hands fresh sources from the app's
//!   factories to the adapter, sets the app's sinks for the peers and calls
//!   [`MediaAdapter::start`];
//! - `AddPeer` / `RemovePeer` / `SetMediaType` / `ApplySignal` / `SetDevice` / `Stop`: the
//!   adapter's matching operation, with the sinks of the users concerned;
//! - the adapter's `Signal`s go out with `send_media_signal` (in order); its first frames go to
//!   the engine, which reports the call's first frame to the server once;
//! - everything else the adapter reports (first frames, stats, audio levels, remote media
//!   available, errors) goes to the app's [`MediaEventStream`].
//!
//! Commands and the app's waits ([`MediaHandle::barrier`]) share one ordered queue, so a mute
//! the app asks for after seeing `CallConnected` always lands after that call's media started.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};

use callplus_media::{
    AudioConfig, IvfSink, MediaAdapter, MediaError, MediaEvent, MediaEvents, MediaSink, MediaSource,
    OggOpusSink, PeerSpec, StartMedia, TestPatternSource, ToneSource, VideoConfig, WebRtcConfig,
    WebRtcMediaAdapter,
};
#[cfg(feature = "test-hooks")]
use callplus_session::MediaPayload;
use callplus_session::client::MediaCommand;
use callplus_session::{CallId, IceServer, MediaKind, MediaType, UserId};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{Client, Inner};

/// Makes a fresh local source for each call (a microphone or a camera).
pub type SourceFactory = Arc<dyn Fn() -> Result<Box<dyn MediaSource>, MediaError> + Send + Sync>;

/// Makes the sink for a remote user's audio or video in a call; `None` drops that media.
pub type SinkFactory = Arc<dyn Fn(&CallId, &UserId, MediaKind) -> Option<Box<dyn MediaSink>> + Send + Sync>;

/// Which way a media signal crosses a [`SignalFilter`].
#[cfg(feature = "test-hooks")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalDirection {
    /// From this device's media stack to the other end (sent through the server).
    Outgoing,
    /// From the other end (received from the server) to this device's media stack.
    Incoming,
}

/// Test hook (feature `test-hooks`): sees every media signal between the media stack and the
/// signalling connection, with its direction and the other end's user, and returns what to pass
/// on (`None` drops it). Lets an end-to-end test put a device's media behind a relay of its own
/// (`callplus_media::lossy_relay`) by rewriting the ICE candidates both ways.
#[cfg(feature = "test-hooks")]
pub type SignalFilter =
    Arc<dyn Fn(SignalDirection, &UserId, MediaPayload) -> Option<MediaPayload> + Send + Sync>;

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
    /// The test hook on media signals ([`MediaOptions::with_signal_filter_for_tests`]).
    #[cfg(feature = "test-hooks")]
    signal_filter: Option<SignalFilter>,
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
            .finish_non_exhaustive()
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
            #[cfg(feature = "test-hooks")]
            signal_filter: None,
        }
    }

    /// Test hook (feature `test-hooks`, which no product build turns on): every media signal
    /// goes through `filter` on its way out of and into the media stack (see [`SignalFilter`]).
    #[cfg(feature = "test-hooks")]
    pub fn with_signal_filter_for_tests(
        mut self,
        filter: impl Fn(SignalDirection, &UserId, MediaPayload) -> Option<MediaPayload> + Send + Sync + 'static,
    ) -> Self {
        self.signal_filter = Some(Arc::new(filter));
        self
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
        MediaEvent::ActiveSpeaker { call_id, user: Some(user) } => {
            format!("call {call_id}: active speaker {user}")
        }
        MediaEvent::ActiveSpeaker { call_id, user: None } => format!("call {call_id}: no active speaker"),
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
    /// A media command of the engine, in the order the engine gave them.
    Command(MediaCommand),
    /// Answered once everything queued before it was executed.
    Barrier(oneshot::Sender<()>),
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

    /// Waits until the glue has executed every command queued so far (a camera switch the
    /// engine ordered is in effect when this returns).
    pub(super) async fn barrier(&self) {
        let (done, wait) = oneshot::channel();
        if let Some(tx) = self.input.upgrade()
            && tx.send(GlueInput::Barrier(done)).is_ok()
        {
            drop(tx);
            let _ = wait.await;
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
    commands_tx: mpsc::UnboundedSender<MediaCommand>,
    commands_rx: mpsc::UnboundedReceiver<MediaCommand>,
}

impl MediaSetup {
    /// Creates the adapter (inside the runtime) and the glue's queue.
    pub(super) fn new(options: MediaOptions) -> Self {
        let (adapter, media_events) = WebRtcMediaAdapter::new(options.webrtc.clone());
        let (input_tx, input_rx) = mpsc::unbounded_channel();
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        MediaSetup {
            options,
            adapter: Arc::new(adapter),
            media_events,
            input_tx,
            input_rx,
            commands_tx,
            commands_rx,
        }
    }

    /// Where the driver puts the engine's media commands.
    pub(super) fn command_sink(&self) -> super::driver::MediaSink {
        self.commands_tx.clone()
    }

    /// The client's handle, and the glue to start once the client exists.
    pub(super) fn split(self) -> (MediaHandle, GlueTask) {
        let MediaSetup { options, adapter, media_events, input_tx, input_rx, commands_tx, commands_rx } =
            self;
        let (events_tx, events_rx) = mpsc::channel(options.event_capacity.max(1));
        let weak_input = input_tx.downgrade();
        // The driver holds the only strong command sender: the glue ends when the driver does.
        drop(commands_tx);
        let glue = Glue {
            adapter: Arc::clone(&adapter) as Arc<dyn MediaAdapter>,
            options,
            client: Weak::new(),
            events: events_tx,
            calls: HashMap::new(),
        };
        let handle = MediaHandle {
            adapter,
            events: Mutex::new(Some(MediaEventStream { rx: events_rx })),
            input: weak_input,
            task: Mutex::new(None),
        };
        let task = GlueTask { glue, input_tx, input: input_rx, commands: commands_rx, media: media_events };
        (handle, task)
    }
}

/// The glue, ready to run.
pub(super) struct GlueTask {
    glue: Glue,
    input_tx: mpsc::UnboundedSender<GlueInput>,
    input: mpsc::UnboundedReceiver<GlueInput>,
    commands: mpsc::UnboundedReceiver<MediaCommand>,
    media: MediaEvents,
}

impl GlueTask {
    /// Runs the glue for `client` (whose handle is `handle`).
    pub(super) fn spawn(self, client: &Arc<Inner>, handle: &MediaHandle) {
        let GlueTask { mut glue, input_tx, input, commands, media } = self;
        glue.client = Arc::downgrade(client);
        // Commands from the driver and barriers from the app share one ordered queue.
        tokio::spawn(forward_commands(commands, input_tx));
        let task = tokio::spawn(glue.run(input, media));
        *handle.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
    }
}

/// Moves the driver's media commands into the glue's queue; ends (closing the queue's last
/// strong sender) when the driver ends.
async fn forward_commands(
    mut commands: mpsc::UnboundedReceiver<MediaCommand>,
    input: mpsc::UnboundedSender<GlueInput>,
) {
    while let Some(command) = commands.recv().await {
        if input.send(GlueInput::Command(command)).is_err() {
            break;
        }
    }
}

/// The sinks handed out for one call whose media runs.
struct CallMedia {
    /// Remote users with media.
    peers: HashSet<UserId>,
    /// The camera source and video sinks were set up.
    video: bool,
}

/// Executes the engine's media commands on the adapter and relays what the adapter reports.
/// It decides nothing about calls: which peers, who offers, when to start and stop all come
/// from the commands.
struct Glue {
    adapter: Arc<dyn MediaAdapter>,
    options: MediaOptions,
    client: Weak<Inner>,
    events: mpsc::Sender<MediaEvent>,
    calls: HashMap<CallId, CallMedia>,
}

impl Glue {
    async fn run(mut self, mut input: mpsc::UnboundedReceiver<GlueInput>, mut media: MediaEvents) {
        let mut media_open = true;
        loop {
            tokio::select! {
                got = input.recv() => match got {
                    Some(GlueInput::Command(command)) => self.execute(command).await,
                    Some(GlueInput::Barrier(done)) => {
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

    /// The test hook's verdict on a media signal (the signal itself without a hook).
    #[cfg(feature = "test-hooks")]
    fn filter_signal(
        &self,
        direction: SignalDirection,
        other: &UserId,
        payload: MediaPayload,
    ) -> Option<MediaPayload> {
        match &self.options.signal_filter {
            Some(filter) => filter(direction, other, payload),
            None => Some(payload),
        }
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

    async fn execute(&mut self, command: MediaCommand) {
        match command {
            MediaCommand::Start {
                call_id,
                local_user,
                local_device,
                media_type,
                peers,
                ice_servers,
                microphone_enabled,
                camera_enabled,
                sfu,
            } => {
                let ice_servers = self.options.ice_servers.clone().unwrap_or(ice_servers);
                let start = StartMedia {
                    call_id,
                    local_user,
                    local_device,
                    peers: peers.into_iter().map(PeerSpec::from).collect(),
                    media_type,
                    ice_servers,
                    sfu,
                };
                self.start(start, microphone_enabled, camera_enabled).await;
            }
            MediaCommand::AddPeer { call_id, peer } => self.add_peer(&call_id, peer.into()).await,
            MediaCommand::RemovePeer { call_id, user_id, device_id } => {
                if let Some(call) = self.calls.get_mut(&call_id) {
                    call.peers.remove(&user_id);
                }
                if let Err(e) = self.adapter.remove_peer(&call_id, &user_id, &device_id).await {
                    tracing::debug!(call = %call_id, user = %user_id, error = %e, "removing a media peer");
                }
                self.detach_sinks(&user_id);
            }
            MediaCommand::SetMediaType { call_id, media_type } => {
                self.set_media_type(&call_id, media_type).await
            }
            MediaCommand::ApplySignal { call_id, from_user, from_device, payload } => {
                #[cfg(feature = "test-hooks")]
                let Some(payload) = self.filter_signal(SignalDirection::Incoming, &from_user, payload) else {
                    return;
                };
                if let Err(e) = self.adapter.handle_signal(&call_id, &from_user, &from_device, payload).await
                {
                    tracing::debug!(call = %call_id, from = %from_user, error = %e, "media signal refused");
                }
            }
            MediaCommand::SetDevice { kind, enabled } => self.set_device(kind, enabled).await,
            MediaCommand::Stop { call_id } => self.stop(&call_id).await,
        }
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

    async fn start(&mut self, start: StartMedia, microphone_enabled: bool, camera_enabled: bool) {
        let call_id = start.call_id.clone();
        if self.calls.contains_key(&call_id) {
            return;
        }
        tracing::info!(call = %call_id, peers = start.peers.len(), media_type = ?start.media_type, "starting media");
        self.set_device(MediaKind::Audio, microphone_enabled).await;
        self.set_device(MediaKind::Video, camera_enabled).await;
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
        let mut call = CallMedia { peers: HashSet::new(), video: false };
        if start.media_type == MediaType::AudioVideo {
            self.enable_video(&call_id, &mut call).await;
        }
        for peer in &start.peers {
            self.attach_sinks(&call_id, &peer.user_id, call.video);
            call.peers.insert(peer.user_id.clone());
        }
        match self.adapter.start(start).await {
            Ok(()) => {
                self.calls.insert(call_id, call);
            }
            Err(e) => {
                for user in &call.peers {
                    self.detach_sinks(user);
                }
                self.error(Some(&call_id), format!("cannot start media: {e}"));
            }
        }
    }

    async fn add_peer(&mut self, call_id: &CallId, peer: PeerSpec) {
        let Some(call) = self.calls.get_mut(call_id) else { return };
        if !call.peers.insert(peer.user_id.clone()) {
            return;
        }
        let (video, user) = (call.video, peer.user_id.clone());
        self.attach_sinks(call_id, &user, video);
        if let Err(e) = self.adapter.add_peer(call_id, peer).await {
            if let Some(call) = self.calls.get_mut(call_id) {
                call.peers.remove(&user);
            }
            self.detach_sinks(&user);
            self.error(Some(call_id), format!("cannot add {user} to the media: {e}"));
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
        for user in &call.peers {
            self.detach_sinks(user);
        }
    }

    async fn set_media_type(&mut self, call_id: &CallId, media_type: MediaType) {
        let Some(mut call) = self.calls.remove(call_id) else { return };
        if media_type == MediaType::AudioVideo && !call.video {
            self.enable_video(call_id, &mut call).await;
            for user in &call.peers {
                self.attach_sink(call_id, user, MediaKind::Video);
            }
        }
        if let Err(e) = self.adapter.set_media_type(call_id, media_type).await {
            self.error(Some(call_id), format!("cannot switch the media type: {e}"));
        }
        self.calls.insert(call_id.clone(), call);
    }

    fn on_media_event(&mut self, event: MediaEvent) {
        match event {
            MediaEvent::Signal { call_id, to_user, to_device, payload } => {
                #[cfg(feature = "test-hooks")]
                let Some(payload) = self.filter_signal(SignalDirection::Outgoing, &to_user, payload) else {
                    return;
                };
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
                // The engine reports the call's first frame to the server once.
                if let Some(client) = self.client() {
                    let id = call_id.clone();
                    client.input(move |e, now| e.media_first_frame(now, &id));
                }
                self.emit(event);
            }
            other => self.emit(other),
        }
    }
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
