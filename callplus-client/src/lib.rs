//! The async client: a tokio driver around the sans-IO [`ClientEngine`].
//!
//! [`Client::connect`] opens a signalling stream, waits for the server's Welcome and hands back
//! a [`Client`] (cheap to clone, `Send + Sync`) and the [`EventStream`] of [events](docs/protocol.md#events). A
//! background task owns the engine and the transport: it feeds the server's frames in, writes
//! the engine's frames out, fires its timers, and reconnects with jittered exponential backoff
//! when the stream breaks; the engine resumes the session, so calls survive a dropped TCP
//! connection inside the server's resume window and no event is lost or delivered twice.
//!
//! ```no_run
//! use callplus_client::{Client, ClientOptions, Event};
//! use callplus_session::{CallType, MediaType};
//!
//! # async fn demo(token: &str) -> Result<(), callplus_session::Error> {
//! let (client, mut events) = Client::connect("http://127.0.0.1:7700", token, ClientOptions::default()).await?;
//! let started = client
//!     .start_call(&["bob"], CallType::Single, MediaType::Audio, Default::default())
//!     .await?;
//! while let Some(event) = events.next().await {
//!     println!("{}", callplus_client::describe_event(&event));
//!     if let Event::CallEnded { session, .. } = &event {
//!         if session.call_id() == &started.call.call_id {
//!             break;
//!         }
//!     }
//! }
//! client.disconnect().await;
//! # Ok(())
//! # }
//! ```
//!
//! Errors are [`Error`]s carrying the protocol's result code ([result codes](docs/protocol.md#result-codes)): local validation
//! failures come from the engine, refusals from the server keep the server's code and message,
//! and `NOT_CONNECTED` means the client is gone (disconnected, kicked, or never connected).

mod clock;
pub mod describe;
mod driver;
#[cfg(feature = "media")]
mod media;
mod tls;
mod transport;
mod websocket;

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use callplus_session::client::{CallOptions, ClientEngine, RequestId};
use callplus_session::{
    CallId, CallInfo, CallType, Code, DeviceId, IceServer, MediaPayload, MediaType, PushConfig, RecordOrder,
    RecordPage, ResponseBody, TransactionId, UserId,
};
use rand::Rng as _;
use tokio::sync::{mpsc, oneshot};

pub use callplus_session::Error;
pub use callplus_session::client::{CallSession, ConnectionState};
pub use describe::describe_event;
#[cfg(feature = "media")]
pub use media::{
    MediaEventStream, MediaOptions, SinkFactory, SourceFactory, describe_media_event, record_sink,
};
#[cfg(feature = "test-hooks")]
pub use media::{SignalDirection, SignalFilter};
pub use tls::TlsOptions;

/// What the client tells the app: the engine's events ([events](docs/protocol.md#events) and connection state), every one
/// of them. Request outcomes and transport bookkeeping are the driver's own
/// (`callplus_session::client::DriverEvent`); media decisions go to the media glue.
pub type Event = callplus_session::client::ClientEvent;

/// The crate version, as reported by [`Client::version`].
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Settings of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// This installation's id; `None` picks a random one per client.
    pub device_id: Option<DeviceId>,
    /// First reconnect delay (before jitter).
    pub reconnect_backoff_min: Duration,
    /// Longest reconnect delay.
    pub reconnect_backoff_max: Duration,
    /// How long a request may wait for its answer before it fails with `TIMEOUT`.
    pub request_timeout: Duration,
    /// How long one attempt to open a connection may take.
    pub connect_timeout: Duration,
    /// How an `https://` server's certificate is checked (see [`TlsOptions`]).
    pub tls: TlsOptions,
    /// Real media: with it, the client sets up WebRTC audio/video by itself for every call it
    /// is connected in (see [`MediaOptions`]); `None` (the default) leaves media to the app.
    #[cfg(feature = "media")]
    pub media: Option<MediaOptions>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            device_id: None,
            reconnect_backoff_min: Duration::from_millis(100),
            reconnect_backoff_max: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            tls: TlsOptions::default(),
            #[cfg(feature = "media")]
            media: None,
        }
    }
}

impl ClientOptions {
    /// These options with a fixed device id.
    pub fn with_device_id(mut self, device_id: DeviceId) -> Self {
        self.device_id = Some(device_id);
        self
    }

    /// These options with these TLS trust settings (for `https://` endpoints).
    pub fn with_tls(mut self, tls: TlsOptions) -> Self {
        self.tls = tls;
        self
    }

    /// These options with media set up by the client.
    #[cfg(feature = "media")]
    pub fn with_media(mut self, media: MediaOptions) -> Self {
        self.media = Some(media);
        self
    }
}

/// The answer to [`Client::start_call`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedCall {
    /// The new call as the server created it.
    pub call: CallInfo,
    /// Callees already in another call (they are rung anyway unless the server auto-rejects
    /// busy users).
    pub busy_users: Vec<UserId>,
}

impl StartedCall {
    /// The new call's id.
    pub fn call_id(&self) -> &CallId {
        &self.call.call_id
    }
}

/// An engine operation that sends a request: runs on the driver task with the current time.
type RequestOp = Box<dyn FnOnce(&mut ClientEngine, i64) -> Result<RequestId, Error> + Send>;

/// An engine input that answers nothing: runs on the driver task with the current time.
type InputOp = Box<dyn FnOnce(&mut ClientEngine, i64) + Send>;

/// What the [`Client`] handles ask the driver to do.
enum Command {
    /// Run an operation and answer with the server's response.
    Request { op: RequestOp, reply: oneshot::Sender<Result<ResponseBody, Error>> },
    /// Feed an input to the engine (the media stack's first frame).
    Input(InputOp),
    /// Replace the token used by later Hellos.
    SetToken(String),
    /// Say Goodbye and stop.
    Disconnect { done: oneshot::Sender<()> },
}

/// What the driver publishes for the synchronous getters.
#[derive(Debug, Clone)]
struct Snapshot {
    /// The engine's clock (shared with the driver, which reads the engine by it).
    clock: clock::EngineClock,
    /// The server's clock minus the engine's, as the engine last measured it.
    server_offset_ms: i64,
    state: ConnectionState,
    user_id: Option<UserId>,
    current: Option<CallSession>,
    /// STUN/TURN servers from the Welcome.
    ice_servers: Vec<IceServer>,
}

struct Inner {
    commands: mpsc::UnboundedSender<Command>,
    snapshot: Arc<Mutex<Snapshot>>,
    device_id: DeviceId,
    #[cfg(feature = "media")]
    media: Option<media::MediaHandle>,
}

/// A connection to a callplus server, acting as one user on one device.
///
/// Cheap to clone; all clones drive the same connection. When the last clone is dropped the
/// client says Goodbye and its task ends (as with [`Client::disconnect`]).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("device_id", &self.inner.device_id)
            .field("user_id", &self.user_id())
            .field("state", &self.connection_state())
            .finish()
    }
}

impl Client {
    /// Connects to `endpoint` (`http://host:port`, or `https://host:port` for a server with
    /// TLS, checked as [`ClientOptions::tls`] says) with `token` and waits for the Welcome.
    /// A `ws://host:port` or `wss://host:port` endpoint (optionally with a path; `/v1/ws` when
    /// none) selects the WebSocket transport instead of gRPC: the same protocol, the same
    /// behaviour.
    ///
    /// Must be called inside a tokio runtime; the client's task runs on it.
    ///
    /// # Errors
    /// The server's refusal (`TOKEN_INVALID`, `TOKEN_EXPIRED`, …) with its code
    /// and message; `NOT_CONNECTED` when the server cannot be reached or closes the stream
    /// before welcoming, and when its TLS certificate is not trusted; `PARAM_ERROR` for a
    /// malformed endpoint or TLS settings on a plaintext one.
    pub async fn connect(
        endpoint: &str,
        token: &str,
        options: ClientOptions,
    ) -> Result<(Client, EventStream), Error> {
        let transport: Arc<dyn transport::Transport> =
            if endpoint.starts_with("ws://") || endpoint.starts_with("wss://") {
                Arc::new(websocket::WsTransport::new(endpoint, options.connect_timeout, &options.tls)?)
            } else {
                Arc::new(transport::GrpcTransport::new(endpoint, options.connect_timeout, &options.tls)?)
            };
        Self::connect_with(transport, token, options).await
    }

    async fn connect_with(
        transport: Arc<dyn transport::Transport>,
        token: &str,
        options: ClientOptions,
    ) -> Result<(Client, EventStream), Error> {
        let device_id = match options.device_id.clone() {
            Some(id) => id,
            None => random_device_id()?,
        };
        let mut config = callplus_session::client::ClientConfig::new(device_id.clone(), token);
        config.client_version = format!("callplus-signal/{VERSION}");
        config.request_timeout_ms = u32::try_from(options.request_timeout.as_millis()).unwrap_or(u32::MAX);
        let engine = ClientEngine::new(config);
        let clock = clock::EngineClock::start();
        let snapshot = Arc::new(Mutex::new(Snapshot {
            clock,
            server_offset_ms: 0,
            state: engine.connection_state(),
            user_id: None,
            current: None,
            ice_servers: Vec::new(),
        }));
        #[cfg(feature = "media")]
        let media_setup = options.media.clone().map(media::MediaSetup::new);
        #[cfg(feature = "media")]
        let media_sink = media_setup.as_ref().map(media::MediaSetup::command_sink);
        #[cfg(not(feature = "media"))]
        let media_sink = None;
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let driver = driver::Driver::new(
            engine,
            clock,
            transport,
            driver::Backoff::new(options.reconnect_backoff_min, options.reconnect_backoff_max),
            commands_rx,
            events_tx,
            snapshot.clone(),
            ready_tx,
        )
        .with_media(media_sink);
        tokio::spawn(driver.run());
        match ready_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(Error::new(Code::NotConnected, "the client task ended before connecting")),
        }
        #[cfg(feature = "media")]
        let inner = {
            let (media, glue) = match media_setup {
                Some(setup) => {
                    let (handle, glue) = setup.split();
                    (Some(handle), Some(glue))
                }
                None => (None, None),
            };
            let inner = Arc::new(Inner { commands, snapshot, device_id, media });
            if let (Some(glue), Some(handle)) = (glue, &inner.media) {
                glue.spawn(&inner, handle);
            }
            inner
        };
        #[cfg(not(feature = "media"))]
        let inner = Arc::new(Inner { commands, snapshot, device_id });
        Ok((Client { inner }, EventStream { rx: events_rx }))
    }

    /// The SDK version (this crate's).
    pub fn version() -> &'static str {
        VERSION
    }

    /// This client's device id.
    pub fn device_id(&self) -> &DeviceId {
        &self.inner.device_id
    }

    /// The user the token names (known once connected).
    pub fn user_id(&self) -> Option<UserId> {
        self.snapshot().user_id
    }

    /// The state of the connection.
    pub fn connection_state(&self) -> ConnectionState {
        self.snapshot().state
    }

    /// The current call (placed, accepted or joined here, and not ended), if any.
    pub fn current_call(&self) -> Option<CallSession> {
        self.snapshot().current
    }

    /// The server's clock now (Unix ms), as measured at the latest Welcome or heartbeat answer;
    /// this machine's clock before any. Pass it to [`CallSession::duration_ms`] for the talk
    /// time so far, which then counts from the server's start time whatever this machine's
    /// clock says.
    ///
    /// ```no_run
    /// # async fn f(client: callplus_client::Client) {
    /// if let Some(call) = client.current_call() {
    ///     println!("{} ms", call.duration_ms(client.server_time_ms()));
    /// }
    /// # }
    /// ```
    pub fn server_time_ms(&self) -> i64 {
        let snapshot = self.inner.snapshot.lock().unwrap_or_else(PoisonError::into_inner);
        snapshot.clock.now_ms().saturating_add(snapshot.server_offset_ms)
    }

    fn snapshot(&self) -> Snapshot {
        self.inner.snapshot.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Starts a call to `callees` (exactly one for [`CallType::Single`]).
    ///
    /// # Errors
    /// `USER_LIST_INVALID` (empty list), `SINGLE_CALL_NOT_SUPPORT_MULTI_PERSON`,
    /// `SESSION_EXIST` (a call is current), `PARAM_ERROR`, or the server's refusal.
    pub async fn start_call(
        &self,
        callees: &[impl AsRef<str>],
        call_type: CallType,
        media_type: MediaType,
        options: CallOptions,
    ) -> Result<StartedCall, Error> {
        let callees = owned(callees);
        let body =
            self.request(move |e, now| e.start_call(now, &callees, call_type, media_type, options)).await?;
        match body {
            ResponseBody::Started { call, busy } => {
                Ok(StartedCall { call: Arc::unwrap_or_clone(call), busy_users: busy })
            }
            ResponseBody::Call(call) => {
                Ok(StartedCall { call: Arc::unwrap_or_clone(call), busy_users: Vec::new() })
            }
            other => Err(unexpected("start_call", &other)),
        }
    }

    /// Answers an incoming call. A current call, if any, is hung up first (reason
    /// `ACCEPTED_ANOTHER_CALL`).
    ///
    /// # Errors
    /// `CALL_ID_INVALID` / `CALL_NOT_FOUND` / `CALL_ENDED` and other refusals.
    pub async fn accept(&self, call_id: &CallId) -> Result<(), Error> {
        let call_id = call_id.clone();
        self.request(move |e, now| e.accept(now, &call_id)).await.map(drop)
    }

    /// Hangs up `call_id` (the current call when `None`): a reject before answering as a
    /// callee, a cancel as the caller.
    ///
    /// # Errors
    /// `NOT_IN_CALL` when there is no such call, and the server's refusals.
    pub async fn hangup(&self, call_id: Option<&CallId>) -> Result<(), Error> {
        self.hangup_with_push(call_id, None).await
    }

    /// [`hangup`](Self::hangup) with push settings for the "call cancelled" notification.
    ///
    /// # Errors
    /// As [`hangup`](Self::hangup).
    pub async fn hangup_with_push(
        &self,
        call_id: Option<&CallId>,
        push: Option<PushConfig>,
    ) -> Result<(), Error> {
        let call_id = call_id.cloned();
        self.request(move |e, now| e.hangup(now, call_id.as_ref(), push)).await.map(drop)
    }

    /// Reports that this device shows (rings) an incoming call.
    ///
    /// # Errors
    /// The server's refusals (the call ended meanwhile, …).
    pub async fn ringing(&self, call_id: &CallId) -> Result<(), Error> {
        let call_id = call_id.clone();
        self.request(move |e, now| e.ringing(now, &call_id)).await.map(drop)
    }

    /// Joins an unended MULTI call this user was in or invited to.
    ///
    /// # Errors
    /// `SESSION_EXIST`, `CALL_NOT_FOUND`, `FORBIDDEN`, `CALL_FULL`, `CALL_ENDED`, ….
    pub async fn join_call(&self, call_id: &CallId) -> Result<(), Error> {
        let call_id = call_id.clone();
        self.request(move |e, now| e.join_call(now, &call_id)).await.map(drop)
    }

    /// Invites `users` into the current call (a SINGLE call becomes MULTI); returns the
    /// invitees that are busy in another call.
    ///
    /// # Errors
    /// `NOT_IN_CALL`, `USER_LIST_INVALID`, `CALL_FULL`, ….
    pub async fn invite(&self, users: &[impl AsRef<str>]) -> Result<Vec<UserId>, Error> {
        self.invite_with(users, None, String::new()).await
    }

    /// [`invite`](Self::invite) with push settings and data for the invitees.
    ///
    /// # Errors
    /// As [`invite`](Self::invite).
    pub async fn invite_with(
        &self,
        users: &[impl AsRef<str>],
        push: Option<PushConfig>,
        extra: String,
    ) -> Result<Vec<UserId>, Error> {
        let users = owned(users);
        match self.request(move |e, now| e.invite(now, &users, push, extra)).await? {
            ResponseBody::Busy(busy) => Ok(busy),
            ResponseBody::Empty => Ok(Vec::new()),
            other => Err(unexpected("invite", &other)),
        }
    }

    /// Asks the peer of the current SINGLE call to change the media type; the outcome arrives
    /// as [`Event::ChangeMediaTypeResult`].
    ///
    /// # Errors
    /// `MEDIATYPE_INVALID`, `NOT_IN_CALL`, ….
    pub async fn request_change_media_type(&self, media_type: MediaType) -> Result<TransactionId, Error> {
        match self.request(move |e, now| e.request_change_media_type(now, media_type)).await? {
            ResponseBody::Transaction(tx) => Ok(tx),
            other => Err(unexpected("request_change_media_type", &other)),
        }
    }

    /// Withdraws this device's pending change-media-type request.
    ///
    /// # Errors
    /// `TRANSACTION_ID_INVALID`, ….
    pub async fn cancel_change_media_type(&self, transaction_id: &TransactionId) -> Result<(), Error> {
        let tx = transaction_id.clone();
        self.request(move |e, now| e.cancel_change_media_type(now, &tx)).await.map(drop)
    }

    /// Answers the peer's change-media-type request.
    ///
    /// # Errors
    /// `TRANSACTION_ID_INVALID`, ….
    pub async fn reply_change_media_type(
        &self,
        transaction_id: &TransactionId,
        agree: bool,
    ) -> Result<(), Error> {
        let tx = transaction_id.clone();
        self.request(move |e, now| e.reply_change_media_type(now, &tx, agree)).await.map(drop)
    }

    /// Turns this user's camera on or off in the current call (the others are told). With
    /// [`ClientOptions::media`], the real video track is muted too (no video packet is sent
    /// while off): the engine orders the switch together with the request, and this returns
    /// once the switch is in effect and the server confirmed.
    ///
    /// # Errors
    /// `NOT_IN_CALL`, `NOT_VIDEO_CALL`, ….
    pub async fn set_camera_enabled(&self, enabled: bool) -> Result<(), Error> {
        let result = self.request(move |e, now| e.set_camera_enabled(now, enabled)).await.map(drop);
        self.media_barrier().await;
        result
    }

    /// Turns this user's microphone on or off in the current call (the others are told). With
    /// [`ClientOptions::media`], the real audio track is muted too.
    ///
    /// # Errors
    /// `NOT_IN_CALL`, ….
    pub async fn set_microphone_enabled(&self, enabled: bool) -> Result<(), Error> {
        let result = self.request(move |e, now| e.set_microphone_enabled(now, enabled)).await.map(drop);
        self.media_barrier().await;
        result
    }

    /// Waits until the media glue executed every media command given so far (no-op without
    /// media).
    async fn media_barrier(&self) {
        #[cfg(feature = "media")]
        if let Some(media) = &self.inner.media {
            media.barrier().await;
        }
    }

    /// `mute_all_remote_audio`: while muted, no remote user's audio is played (handed to the
    /// sinks); it is still received, so audio levels and status reports go on, and unmuting
    /// plays again at once. Holds across calls until changed; what this user sends is
    /// untouched (that is [`Client::set_microphone_enabled`]).
    ///
    /// # Errors
    /// `INVALID_STATE` without [`ClientOptions::media`] (the app plays remote audio itself).
    #[cfg(feature = "media")]
    pub fn mute_all_remote_audio(&self, muted: bool) -> Result<(), Error> {
        let media = self.inner.media.as_ref().ok_or_else(|| {
            Error::new(Code::InvalidState, "media is off: the app plays remote audio itself")
        })?;
        callplus_media::MediaAdapter::set_remote_audio_muted(&*media.adapter, muted);
        Ok(())
    }

    /// Which layer of `user`'s video this device receives: the tiny one (a quarter of the
    /// pixels, for a small view) or the full one (the default). In calls through the SFU the
    /// choice reaches the SFU over the media connection and takes effect at that layer's next
    /// key frame (the SFU asks the publisher for one of that layer only); it holds across calls
    /// until changed. Peer-to-peer calls send one layer, so it changes nothing there.
    ///
    /// # Errors
    /// `INVALID_STATE` without [`ClientOptions::media`].
    #[cfg(feature = "media")]
    pub async fn set_video_tiny(&self, user: &UserId, tiny: bool) -> Result<(), Error> {
        let media = self.inner.media.as_ref().ok_or_else(|| {
            Error::new(Code::InvalidState, "media is off: the app receives no video through the client")
        })?;
        callplus_media::MediaAdapter::set_video_tiny(&*media.adapter, user, tiny).await;
        Ok(())
    }

    /// `set_video_view(user, sink, tiny)`: `user`'s video goes to `sink` from now on (replacing
    /// what the sink factory gave), in the layer `tiny` chooses (see [`Client::set_video_tiny`]).
    ///
    /// # Errors
    /// `INVALID_STATE` without [`ClientOptions::media`].
    #[cfg(feature = "media")]
    pub async fn set_video_view(
        &self,
        user: &UserId,
        sink: Box<dyn callplus_media::MediaSink>,
        tiny: bool,
    ) -> Result<(), Error> {
        let media = self.inner.media.as_ref().ok_or_else(|| {
            Error::new(Code::InvalidState, "media is off: the app receives no video through the client")
        })?;
        callplus_media::MediaAdapter::set_video_view(&*media.adapter, user.clone(), sink, tiny).await;
        Ok(())
    }

    /// The media events of this client (first frames, status reports, audio levels, errors):
    /// `Some` the first time it is asked when [`ClientOptions::media`] is set, `None` after that
    /// or without media.
    #[cfg(feature = "media")]
    pub fn media_events(&self) -> Option<MediaEventStream> {
        self.inner.media.as_ref().and_then(media::MediaHandle::take_events)
    }

    /// The media adapter the client drives (with [`ClientOptions::media`]): to switch the
    /// camera or microphone source, apply video/audio configs or set sinks by hand.
    #[cfg(feature = "media")]
    pub fn media_adapter(&self) -> Option<Arc<dyn callplus_media::MediaAdapter>> {
        self.inner.media.as_ref().map(|m| Arc::clone(&m.adapter) as Arc<dyn callplus_media::MediaAdapter>)
    }

    /// Reports that the first remote media frame of `call_id` was rendered.
    ///
    /// # Errors
    /// `NOT_IN_CALL`, ….
    pub async fn report_first_frame(&self, call_id: &CallId) -> Result<(), Error> {
        let call_id = call_id.clone();
        self.request(move |e, now| e.report_first_frame(now, &call_id)).await.map(drop)
    }

    /// Relays SDP or ICE to one device of another participant (for the media adapter).
    ///
    /// # Errors
    /// `NOT_IN_CALL`, `PARAM_ERROR`, ….
    pub async fn send_media_signal(
        &self,
        call_id: &CallId,
        to_user: &UserId,
        to_device: &DeviceId,
        payload: MediaPayload,
    ) -> Result<(), Error> {
        let (call_id, to_user, to_device) = (call_id.clone(), to_user.clone(), to_device.clone());
        self.request(move |e, now| e.send_media_signal(now, &call_id, &to_user, &to_device, payload))
            .await
            .map(drop)
    }

    /// The current state of a call this user is or was invited to ("is it still ringing?").
    ///
    /// # Errors
    /// `CALL_NOT_FOUND`, `FORBIDDEN`, ….
    pub async fn get_call(&self, call_id: &CallId) -> Result<CallInfo, Error> {
        let call_id = call_id.clone();
        match self.request(move |e, now| e.get_call(now, &call_id)).await? {
            ResponseBody::Call(call) => Ok(Arc::unwrap_or_clone(call)),
            other => Err(unexpected("get_call", &other)),
        }
    }

    /// One page of this user's call records: `sync_time` -1 for the first page, then the
    /// page's `sync_time`; `count` 1..=100.
    ///
    /// # Errors
    /// `PARAM_ERROR` for a bad count, ….
    pub async fn get_call_records(
        &self,
        sync_time: i64,
        count: u32,
        order: RecordOrder,
    ) -> Result<RecordPage, Error> {
        match self.request(move |e, now| e.get_call_records(now, sync_time, count, order)).await? {
            ResponseBody::Records(page) => Ok(page),
            other => Err(unexpected("get_call_records", &other)),
        }
    }

    /// Deletes this user's records of `call_ids`.
    ///
    /// # Errors
    /// `PARAM_ERROR` for an empty or too long list, ….
    pub async fn delete_call_records(&self, call_ids: Vec<CallId>) -> Result<(), Error> {
        self.request(move |e, now| e.delete_call_records(now, call_ids)).await.map(drop)
    }

    /// Deletes all of this user's records.
    ///
    /// # Errors
    /// `NOT_CONNECTED`, ….
    pub async fn delete_all_call_records(&self) -> Result<(), Error> {
        self.request(|e, now| e.delete_all_call_records(now)).await.map(drop)
    }

    /// Unended MULTI calls this user took part in or was invited to.
    ///
    /// # Errors
    /// `NOT_CONNECTED`, ….
    pub async fn get_available_calls(&self) -> Result<Vec<CallInfo>, Error> {
        match self.request(|e, now| e.get_available_calls(now)).await? {
            ResponseBody::Calls(calls) => Ok(calls),
            other => Err(unexpected("get_available_calls", &other)),
        }
    }

    /// Replaces the token sent when the client reconnects (tokens expire; the app's backend
    /// mints a new one).
    pub fn set_token(&self, token: impl Into<String>) {
        let _ = self.inner.commands.send(Command::SetToken(token.into()));
    }

    /// Says Goodbye (the user's calls end for this device with HANGUP, no resume is kept) and
    /// waits for the client's task to end. The event stream ends after the last events.
    ///
    /// With [`ClientOptions::media`], it also waits until the media of every call has stopped
    /// (recordings are complete when it returns).
    pub async fn disconnect(&self) {
        let (done, wait) = oneshot::channel();
        if self.inner.commands.send(Command::Disconnect { done }).is_ok() {
            let _ = wait.await;
        }
        #[cfg(feature = "media")]
        if let Some(media) = &self.inner.media {
            media.finished().await;
        }
    }

    async fn request(
        &self,
        op: impl FnOnce(&mut ClientEngine, i64) -> Result<RequestId, Error> + Send + 'static,
    ) -> Result<ResponseBody, Error> {
        self.submit(op).await
    }

    /// Feeds an input to the engine on the driver task (no answer is awaited).
    #[cfg_attr(not(feature = "media"), allow(dead_code))]
    fn input(&self, input: impl FnOnce(&mut ClientEngine, i64) + Send + 'static) {
        let _ = self.inner.commands.send(Command::Input(Box::new(input)));
    }

    /// Queues a request now (requests reach the server in the order they are queued) and
    /// returns the future of its answer.
    fn submit(
        &self,
        op: impl FnOnce(&mut ClientEngine, i64) -> Result<RequestId, Error> + Send + 'static,
    ) -> impl Future<Output = Result<ResponseBody, Error>> + Send + 'static {
        let (reply, answer) = oneshot::channel();
        let queued = self.inner.commands.send(Command::Request { op: Box::new(op), reply }).is_ok();
        async move {
            if !queued {
                return Err(not_connected());
            }
            answer.await.map_err(|_| not_connected())?
        }
    }
}

fn owned(ids: &[impl AsRef<str>]) -> Vec<String> {
    ids.iter().map(|s| s.as_ref().to_owned()).collect()
}

fn not_connected() -> Error {
    Error::new(Code::NotConnected, "the client is disconnected")
}

fn unexpected(what: &str, body: &ResponseBody) -> Error {
    Error::new(Code::Internal, format!("unexpected answer to {what}: {body:?}"))
}

fn random_device_id() -> Result<DeviceId, Error> {
    let suffix: String =
        rand::rng().sample_iter(rand::distr::Alphanumeric).take(16).map(char::from).collect();
    DeviceId::new(&format!("dev-{suffix}"))
}

/// The events of one [`Client`], in the order they happened. Ends (yields `None`) after the
/// client's task ends: after [`Client::disconnect`], a kick, or a refused reconnect.
///
/// Also a [`futures_core::Stream`].
#[derive(Debug)]
pub struct EventStream {
    rx: mpsc::UnboundedReceiver<Event>,
}

impl EventStream {
    /// The next event; `None` once the client has stopped and every event was taken.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event if one is waiting.
    pub fn try_next(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

impl futures_core::Stream for EventStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}
