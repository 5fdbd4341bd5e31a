//! The client engine: its state, getters, outputs and media reconciliation. The connection is
//! in `connection.rs`, what server responses and events do in `inbound.rs`, the app's operations in
//! `ops.rs`.

use std::collections::{BTreeMap, VecDeque};

use crate::link::{Inbox, Outbox};
use crate::model::ids::{CallId, UserId};
use crate::model::kinds::CallType;
use crate::model::message::{ClientFrame, Event, Request, ServerBody};
use crate::model::snapshot::IceServer;

use super::config::ClientConfig;
use super::event::{ClientEvent, ConnectionState, DriverEvent, RequestId};
use super::media::{MediaCommand, MediaPlan, WantedMedia};
use super::requests::Requests;
use super::session::{CallSession, LiveCall, Role};
use super::timers::{Timer, TimerTable};

/// Server frames held ahead of a gap.
pub(super) const MAX_HELD_FRAMES: usize = 256;
/// Live calls kept at once (current, incoming, ending); further invitations are ignored.
pub(super) const MAX_LIVE_CALLS: usize = 64;
/// Ended calls remembered, so late events about them are dropped.
const MAX_ENDED_REMEMBERED: usize = 4096;
/// Events about not-yet-known calls held while a StartCall / JoinCall / Accept is in flight.
pub(super) const MAX_EARLY_EVENTS: usize = 64;
/// StartCall requests that timed out, remembered so a late success can be hung up.
pub(super) const MAX_ABANDONED_STARTS: usize = 64;
/// Requests in flight (or queued while reconnecting) at once; more fail with `RateLimited`.
pub(super) const MAX_PENDING_REQUESTS: usize = 1024;
/// Request frames kept for replay (sent, not yet acked by the server); beyond it requests fail
/// with `RateLimited` until the server acks.
pub(super) const MAX_UNACKED_FRAMES: usize = 4096;
/// Shortest ping interval accepted from a Welcome.
pub(super) const MIN_HEARTBEAT_MS: u32 = 500;
/// After this many server frames received without sending anything, a Ping carries the ack
/// at once.
pub(super) const ACK_EVERY: u32 = 32;
/// Otherwise a received frame is acked within this delay (by whatever frame goes out first, or
/// a Ping): the server learns quickly that an invitation reached this device ([delivery states](docs/protocol.md#delivery-states)) and
/// can drop its copy.
pub(super) const ACK_DELAY_MS: i64 = 25;

/// Ended calls, remembered with the last version seen, oldest forgotten first.
#[derive(Debug, Clone, Default)]
pub(super) struct EndedCalls {
    pub(super) versions: BTreeMap<CallId, u64>,
    pub(super) order: VecDeque<CallId>,
}

impl EndedCalls {
    pub(super) fn insert(&mut self, id: CallId, version: u64) {
        if self.versions.insert(id.clone(), version).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > MAX_ENDED_REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.versions.remove(&old);
            }
        }
    }

    pub(super) fn contains(&self, id: &CallId) -> bool {
        self.versions.contains_key(id)
    }

    pub(super) fn version(&self, id: &CallId) -> Option<u64> {
        self.versions.get(id).copied()
    }

    pub(super) fn remove(&mut self, id: &CallId) {
        if self.versions.remove(id).is_some() {
            self.order.retain(|c| c != id);
        }
    }
}

/// The sans-IO client: one per device connection, driven by the async client (or a test).
///
/// It speaks the signalling protocol (Hello / Welcome, numbered and acked frames, resume,
/// heartbeats), validates the [client operations](docs/protocol.md#client-operations) locally, keeps the device's call sessions and
/// turns server frames into the [events](docs/protocol.md#events). It never reads a clock, opens a socket or
/// panics on server input: time comes in as `now_ms` (see "Time" below) and everything
/// it wants done comes out of the `poll_*` methods.
///
/// # Methods
/// - **Transport inputs**, told by the driver: [`transport_connected`](Self::transport_connected),
///   [`transport_lost`](Self::transport_lost), [`handle_frame`](Self::handle_frame),
///   [`handle_timeout`](Self::handle_timeout).
/// - **App commands**: [`disconnect`](Self::disconnect), [`set_token`](Self::set_token) and the
///   call operations ([`start_call`](Self::start_call), [`accept`](Self::accept),
///   [`hangup`](Self::hangup), …). Each validates its input and the state (failing with a SPEC
///   code), queues a request frame and returns its [`RequestId`]; the outcome arrives later as
///   [`DriverEvent::RequestCompleted`] with that id.
/// - **Getters** (`&self`): [`connection_state`](Self::connection_state),
///   [`current_call`](Self::current_call), [`incoming_calls`](Self::incoming_calls),
///   [`session`](Self::session), …
/// - **Outputs**: [`poll_transmit`](Self::poll_transmit), [`poll_event`](Self::poll_event),
///   [`poll_timeout`](Self::poll_timeout).
///
/// # Time
/// `now_ms` is a reading of the driver's **monotonic** clock in milliseconds: it never goes
/// backwards and does not follow wall-clock changes (the async client counts from its start,
/// seeded with the Unix time then, so readings look like timestamps). Every timer (Hello,
/// heartbeat, delayed ack, liveness, request deadlines) is a deadline on that clock, so setting
/// the device's clock forward cannot fire them early. Timestamps the engine writes into
/// sessions are converted to the server's clock ([`server_time_ms`](Self::server_time_ms)).
///
/// # The drive loop
/// 1. Open a transport (the gRPC stream); call `transport_connected(now)`.
/// 2. After **every** input or command, drain `poll_transmit()` (write each frame to the
///    stream, in order) and then `poll_event()` (hand each event to the app) until both return
///    `None`.
/// 3. Arm a timer for `poll_timeout()`; when it fires call `handle_timeout(now)` and go to 2.
///    Re-read `poll_timeout()` after every step: it moves.
/// 4. For each frame read from the stream call `handle_frame(now, frame)`; when the stream
///    breaks call `transport_lost(now)`.
/// 5. Reconnect (with backoff) when the state is `Connecting` or `Reconnecting` without a
///    transport, or on [`DriverEvent::TransportStale`]; never in `Disconnected` or `Kicked`.
///
/// ```
/// use callplus_session::client::{CallOptions, ClientConfig, ClientEngine, ClientEvent, ConnectionState};
/// use callplus_session::{CallType, ClientBody, DeviceId, MediaType, ServerBody, ServerFrame, UserId, Welcome};
///
/// # fn main() -> Result<(), callplus_session::Error> {
/// let mut engine = ClientEngine::new(ClientConfig::new(DeviceId::new("phone-1")?, "token"));
/// let mut now = 1_700_000_000_000;
///
/// // 1. The transport is up: the engine queues a Hello.
/// engine.transport_connected(now);
/// let hello = engine.poll_transmit().expect("a Hello");
/// assert!(matches!(hello.body, ClientBody::Hello(_)));
///
/// // 4. The server answers with a Welcome.
/// let welcome = Welcome {
///     session_id: "s-1".into(),
///     user_id: UserId::new("alice")?,
///     server_time_ms: now,
///     resumed: false,
///     heartbeat_interval_ms: 5_000,
///     liveness_timeout_ms: 20_000,
///     ice_servers: vec![],
///     last_received_seq: 0,
/// };
/// engine.handle_frame(now, ServerFrame { seq: 0, ack: 0, body: ServerBody::Welcome(welcome) });
///
/// // 2. Drain the outputs.
/// while let Some(frame) = engine.poll_transmit() { /* write `frame` to the stream */ }
/// let mut states = Vec::new();
/// while let Some(event) = engine.poll_event() {
///     if let ClientEvent::ConnectionStateChanged(state) = event {
///         states.push(state); // …and tell the app about every event
///     }
/// }
/// assert_eq!(states, [ConnectionState::Connecting, ConnectionState::Connected]);
///
/// // An app command queues a request frame.
/// let request_id =
///     engine.start_call(now, &["bob"], CallType::Single, MediaType::Audio, CallOptions::default())?;
/// let frame = engine.poll_transmit().expect("the StartCall frame");
/// assert_eq!((frame.seq, frame.request_id), (1, request_id));
///
/// // 3. Timers: the next heartbeat is due in 5 s.
/// let wake_at = engine.poll_timeout().expect("a heartbeat is scheduled");
/// assert_eq!(wake_at, now + 5_000);
/// now = wake_at;
/// engine.handle_timeout(now);
/// assert_eq!(engine.poll_transmit().map(|f| f.body), Some(ClientBody::Ping));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ClientEngine {
    pub(super) config: ClientConfig,
    pub(super) state: ConnectionState,
    /// A transport exists (between `transport_connected` and its loss).
    pub(super) transport_up: bool,
    /// A Hello was sent on this transport and no Welcome came yet.
    pub(super) awaiting_welcome: bool,
    /// The server session to resume; `None` when there is none.
    pub(super) session_id: Option<String>,
    pub(super) user_id: Option<UserId>,
    pub(super) heartbeat_ms: u32,
    pub(super) liveness_ms: u32,
    /// Hello, heartbeat, ack and liveness deadlines (the request deadlines live with the
    /// requests).
    pub(super) timers: TimerTable,
    pub(super) rx_unacked: u32,
    pub(super) ice_servers: Vec<IceServer>,
    pub(super) clock_offset_ms: Option<i64>,
    pub(super) outbox: Outbox<(RequestId, Request)>,
    pub(super) inbox: Inbox<ServerBody>,
    pub(super) transmits: VecDeque<ClientFrame>,
    pub(super) events: VecDeque<ClientEvent>,
    pub(super) driver_events: VecDeque<DriverEvent>,
    pub(super) media: MediaPlan,
    pub(super) requests: Requests,
    pub(super) next_request_id: RequestId,
    pub(super) calls: BTreeMap<CallId, LiveCall>,
    pub(super) current: Option<CallId>,
    pub(super) ended: EndedCalls,
    pub(super) early: Vec<Event>,
    pub(super) abandoned_starts: VecDeque<RequestId>,
}

impl ClientEngine {
    /// A new engine in state `Idle`. Nothing happens until
    /// [`transport_connected`](Self::transport_connected).
    pub fn new(config: ClientConfig) -> Self {
        ClientEngine {
            config,
            state: ConnectionState::Idle,
            transport_up: false,
            awaiting_welcome: false,
            session_id: None,
            user_id: None,
            heartbeat_ms: 0,
            liveness_ms: 0,
            timers: TimerTable::default(),
            rx_unacked: 0,
            ice_servers: Vec::new(),
            clock_offset_ms: None,
            outbox: Outbox::new(),
            inbox: Inbox::new(MAX_HELD_FRAMES),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            driver_events: VecDeque::new(),
            media: MediaPlan::default(),
            requests: Requests::default(),
            next_request_id: 1,
            calls: BTreeMap::new(),
            current: None,
            ended: EndedCalls::default(),
            early: Vec::new(),
            abandoned_starts: VecDeque::new(),
        }
    }

    // ----------------------------------------------------------------------------------------
    // Getters

    /// The connection state.
    pub fn connection_state(&self) -> ConnectionState {
        self.state
    }

    /// The user the server's Welcome named; `None` before the first Welcome.
    pub fn user_id(&self) -> Option<&UserId> {
        self.user_id.as_ref()
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The current call: placed, accepted or joined from this device and not ended.
    pub fn current_call(&self) -> Option<&CallSession> {
        self.current.as_ref().and_then(|id| self.calls.get(id)).map(|c| &c.session)
    }

    /// Calls ringing on this device (invited, not answered here, not ended).
    pub fn incoming_calls(&self) -> impl Iterator<Item = &CallSession> {
        self.calls.values().filter(|c| c.role == Role::Invited).map(|c| &c.session)
    }

    /// Every live call of this device (current, incoming, and calls still ending).
    pub fn calls(&self) -> impl Iterator<Item = &CallSession> {
        self.calls.values().map(|c| &c.session)
    }

    /// A live call by id.
    pub fn session(&self, call_id: &CallId) -> Option<&CallSession> {
        self.calls.get(call_id).map(|c| &c.session)
    }

    /// STUN / TURN servers from the latest Welcome, for the media adapter.
    pub fn ice_servers(&self) -> &[IceServer] {
        &self.ice_servers
    }

    /// `server clock - engine clock` in ms, measured at the latest Welcome or Pong.
    pub fn server_clock_offset_ms(&self) -> Option<i64> {
        self.clock_offset_ms
    }

    /// The server's clock (ms since the Unix epoch) at engine time `now_ms`, as measured at the
    /// latest Welcome or Pong; the engine clock itself before any. Session timestamps the
    /// engine makes (a participant connected or ended, a call ended here) use it, so they
    /// compare with the server's own (`started_at_ms`, records) whatever the device's clock
    /// says: pass it to [`CallSession::duration_ms`] for the talk time so far.
    pub fn server_time_ms(&self, now_ms: i64) -> i64 {
        now_ms.saturating_add(self.clock_offset_ms.unwrap_or(0))
    }

    // ----------------------------------------------------------------------------------------
    // Outputs

    /// The next frame to write to the transport.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<ClientFrame> {
        self.transmits.pop_front()
    }

    /// The next event for the app.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// The next thing the driver itself must act on: a request's outcome or a stale transport.
    #[must_use]
    pub fn poll_driver_event(&mut self) -> Option<DriverEvent> {
        self.driver_events.pop_front()
    }

    /// The next media command for the driver's media stack (see [`MediaCommand`]), in order.
    ///
    /// Media follows the sessions: it starts when a call connects on this device, gains and
    /// loses peers as other participants connect and leave, switches type with the call, and
    /// stops when the call ends here. A device never gets media for a call it is not connected
    /// in (one that rings here, or that another device of the user answered).
    #[must_use]
    pub fn poll_media(&mut self) -> Option<MediaCommand> {
        if self.media.is_empty() {
            self.reconcile_media();
        }
        self.media.pop()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called (engine clock):
    /// the earliest of the next heartbeat, the delayed ack, the liveness check, the Hello's
    /// deadline and the request deadlines. `None` when nothing is scheduled.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<i64> {
        let mut next = self.requests.next_deadline();
        let mut consider = |t: Option<i64>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        if self.awaiting_welcome {
            consider(self.timers.get(Timer::Hello));
        }
        if self.state == ConnectionState::Connected && self.transport_up {
            consider(self.timers.get(Timer::Heartbeat));
            consider(self.timers.get(Timer::Ack));
            consider(self.timers.get(Timer::Liveness));
        }
        next
    }

    // ----------------------------------------------------------------------------------------
    // Media

    /// Emits the media commands that bring the driver's media in line with the sessions.
    pub(super) fn reconcile_media(&mut self) {
        let media = &self.media;
        let wanted: Vec<WantedMedia> = self
            .calls
            .values()
            .filter(|call| call.media_runs_here())
            // A MULTI call's media starts once the server said where it goes; media running
            // already (a SINGLE call that became MULTI) goes on as it is.
            .filter(|call| {
                call.session.call_type() != CallType::Multi
                    || call.media_route.is_some()
                    || media.runs(call.session.call_id())
            })
            .map(|call| {
                let session = &call.session;
                let peers = session
                    .remote_participants()
                    .filter(|p| p.state.is_connected())
                    .filter_map(|p| Some((p.user_id.clone(), p.device_id.clone()?)))
                    .collect();
                WantedMedia {
                    call_id: session.call_id().clone(),
                    local_user: session.local_user().clone(),
                    media_type: session.media_type(),
                    peers,
                    microphone_enabled: session.microphone_enabled(),
                    camera_enabled: session.camera_enabled(),
                    sfu: call.media_route.clone().flatten(),
                }
            })
            .collect();
        let calls = &self.calls;
        self.media.reconcile(&self.config.device_id, &self.ice_servers, wanted, &|id| calls.contains_key(id));
    }
}
