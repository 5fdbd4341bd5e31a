//! The client engine: connection lifecycle, the reliable link, timers and the outputs.

use std::collections::{BTreeMap, VecDeque};

use crate::error::{Code, Error};
use crate::link::{Inbox, Outbox, Received};
use crate::model::ids::{CallId, UserId};
use crate::model::kinds::EndReason;
use crate::model::message::{
    ClientBody, ClientFrame, Event, Hello, Request, Response, ResponseBody, Resume, ServerBody, ServerFrame,
    Welcome,
};
use crate::model::snapshot::{CallInfo, IceServer};

use super::config::ClientConfig;
use super::event::{ClientEvent, ConnectionState, RequestId};
use super::requests::{Op, Pending, Requests};
use super::session::{CallSession, LiveCall, Role};

/// Server frames held ahead of a gap.
const MAX_HELD_FRAMES: usize = 256;
/// Live calls kept at once (current, incoming, ending); further invitations are ignored.
pub(super) const MAX_LIVE_CALLS: usize = 64;
/// Ended calls remembered, so late events about them are dropped.
const MAX_ENDED_REMEMBERED: usize = 4096;
/// Events about not-yet-known calls held while a StartCall / JoinCall / Accept is in flight.
const MAX_EARLY_EVENTS: usize = 64;
/// StartCall requests that timed out, remembered so a late success can be hung up.
const MAX_ABANDONED_STARTS: usize = 64;
/// Requests in flight (or queued while reconnecting) at once; more fail with `RateLimited`.
pub(super) const MAX_PENDING_REQUESTS: usize = 1024;
/// Request frames kept for replay (sent, not yet acked by the server); beyond it requests fail
/// with `RateLimited` until the server acks.
pub(super) const MAX_UNACKED_FRAMES: usize = 4096;
/// Shortest ping interval accepted from a Welcome.
const MIN_HEARTBEAT_MS: u32 = 500;
/// After this many server frames received without sending anything, a Ping carries the ack
/// at once.
const ACK_EVERY: u32 = 32;
/// Otherwise a received frame is acked within this delay (by whatever frame goes out first, or
/// a Ping): the server learns quickly that an invitation reached this device (SPEC §9.1) and
/// can drop its copy.
const ACK_DELAY_MS: i64 = 25;

/// Ended calls, remembered with the last version seen, oldest forgotten first.
#[derive(Debug, Clone, Default)]
pub(super) struct EndedCalls {
    versions: BTreeMap<CallId, u64>,
    order: VecDeque<CallId>,
}

impl EndedCalls {
    fn insert(&mut self, id: CallId, version: u64) {
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

    fn version(&self, id: &CallId) -> Option<u64> {
        self.versions.get(id).copied()
    }

    fn remove(&mut self, id: &CallId) {
        if self.versions.remove(id).is_some() {
            self.order.retain(|c| c != id);
        }
    }
}

/// The sans-IO client: one per device connection, driven by the async client (or a test).
///
/// It speaks the signalling protocol (Hello / Welcome, numbered and acked frames, resume,
/// heartbeats), validates the SPEC §3 operations locally, keeps the device's call sessions and
/// turns server frames into the SPEC §4 events. It never reads a clock, opens a socket or
/// panics on server input: time comes in as `now_ms` (ms since the Unix epoch) and everything
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
///   [`ClientEvent::RequestCompleted`] with that id.
/// - **Getters** (`&self`): [`connection_state`](Self::connection_state),
///   [`current_call`](Self::current_call), [`incoming_calls`](Self::incoming_calls),
///   [`session`](Self::session), …
/// - **Outputs**: [`poll_transmit`](Self::poll_transmit), [`poll_event`](Self::poll_event),
///   [`poll_timeout`](Self::poll_timeout).
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
///    transport, or on [`ClientEvent::TransportStale`]; never in `Disconnected` or `Kicked`.
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
    transport_up: bool,
    /// A Hello was sent on this transport and no Welcome came yet.
    awaiting_welcome: bool,
    hello_deadline: Option<i64>,
    /// The server session to resume; `None` when there is none.
    session_id: Option<String>,
    pub(super) user_id: Option<UserId>,
    heartbeat_ms: u32,
    liveness_ms: u32,
    next_ping_at: Option<i64>,
    last_rx_at: i64,
    rx_unacked: u32,
    /// When the received frames must be acked by a Ping if nothing else went out.
    ack_at: Option<i64>,
    ice_servers: Vec<IceServer>,
    clock_offset_ms: Option<i64>,
    outbox: Outbox<(RequestId, Request)>,
    inbox: Inbox<ServerBody>,
    transmits: VecDeque<ClientFrame>,
    pub(super) events: VecDeque<ClientEvent>,
    pub(super) requests: Requests,
    next_request_id: RequestId,
    pub(super) calls: BTreeMap<CallId, LiveCall>,
    pub(super) current: Option<CallId>,
    pub(super) ended: EndedCalls,
    early: Vec<Event>,
    abandoned_starts: VecDeque<RequestId>,
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
            hello_deadline: None,
            session_id: None,
            user_id: None,
            heartbeat_ms: 0,
            liveness_ms: 0,
            next_ping_at: None,
            last_rx_at: 0,
            rx_unacked: 0,
            ack_at: None,
            ice_servers: Vec::new(),
            clock_offset_ms: None,
            outbox: Outbox::new(),
            inbox: Inbox::new(MAX_HELD_FRAMES),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
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

    /// `server clock - local clock` in ms, measured at the latest Welcome or Pong.
    pub fn server_clock_offset_ms(&self) -> Option<i64> {
        self.clock_offset_ms
    }

    // ----------------------------------------------------------------------------------------
    // Transport lifecycle

    /// A transport connection is up: queues a Hello (resuming the session if one exists).
    ///
    /// The state becomes `Connecting` (no session yet) or stays `Reconnecting` (a session
    /// exists); from `Connected` (the driver did not report the loss) it becomes
    /// `Reconnecting`. After `Disconnected` or `Kicked` this starts a fresh session.
    pub fn transport_connected(&mut self, now_ms: i64) {
        if self.transport_up {
            self.transport_lost(now_ms);
        }
        self.transport_up = true;
        self.awaiting_welcome = true;
        self.hello_deadline = Some(now_ms.saturating_add(i64::from(self.config.request_timeout_ms)));
        self.transmits.clear();
        let resume = self.session_id.as_ref().map(|session_id| Resume {
            session_id: session_id.clone(),
            last_received_seq: self.inbox.last_in_order(),
        });
        self.set_state(if resume.is_some() {
            ConnectionState::Reconnecting
        } else {
            ConnectionState::Connecting
        });
        let hello = Hello {
            token: self.config.token.clone(),
            device_id: self.config.device_id.clone(),
            resume,
            client_version: self.config.client_version.clone(),
        };
        self.queue_unsequenced(ClientBody::Hello(hello));
    }

    /// The transport broke. From `Connected` the state becomes `Reconnecting`; unacked request
    /// frames are kept and replayed after the resume. Frames not yet drained from
    /// [`poll_transmit`](Self::poll_transmit) are dropped (requests among them are replayed).
    pub fn transport_lost(&mut self, _now_ms: i64) {
        self.transport_up = false;
        self.awaiting_welcome = false;
        self.hello_deadline = None;
        self.next_ping_at = None;
        self.ack_at = None;
        self.transmits.clear();
        if self.state == ConnectionState::Connected {
            self.set_state(ConnectionState::Reconnecting);
        }
    }

    /// The app disconnects: queues a Goodbye (when connected), ends every local call
    /// (`CallEnded` with `Cancel`, `Reject` or `Hangup` by the call's state, as the server does), fails pending requests with `NotConnected`, forgets the
    /// session, and the state becomes `Disconnected`. Drain
    /// [`poll_transmit`](Self::poll_transmit) before closing the transport.
    pub fn disconnect(&mut self, now_ms: i64) {
        if matches!(self.state, ConnectionState::Idle | ConnectionState::Disconnected)
            && self.calls.is_empty()
        {
            self.transmits.clear();
            self.transport_up = false;
            return;
        }
        let send_goodbye =
            self.transport_up && !self.awaiting_welcome && self.state == ConnectionState::Connected;
        self.transmits.clear();
        if send_goodbye {
            self.queue_unsequenced(ClientBody::Goodbye);
        }
        // A Goodbye ends each call on the server as a hangup from this device would (cancel,
        // reject or hang up by state); say the same here so the app and the record agree.
        let ids: Vec<CallId> = self.calls.keys().cloned().collect();
        for id in ids {
            let reason = self.calls.get(&id).map_or(EndReason::Hangup, LiveCall::local_hangup_reason);
            self.end_call(now_ms, &id, reason, None);
        }
        self.lose_session(now_ms, EndReason::Hangup);
        self.transport_up = false;
        self.awaiting_welcome = false;
        self.hello_deadline = None;
        self.next_ping_at = None;
        self.set_state(ConnectionState::Disconnected);
    }

    /// Replaces the token sent in the next Hello (after `TokenExpired`, say).
    pub fn set_token(&mut self, token: impl Into<String>) {
        self.config.token = token.into();
    }

    // ----------------------------------------------------------------------------------------
    // Inputs

    /// A frame arrived from the server. Hostile or out-of-protocol frames are ignored.
    pub fn handle_frame(&mut self, now_ms: i64, frame: ServerFrame) {
        if !self.transport_up {
            return;
        }
        let ServerFrame { seq, ack, body } = frame;
        if self.awaiting_welcome {
            match body {
                ServerBody::Welcome(welcome) => self.on_welcome(now_ms, ack, welcome),
                ServerBody::Response(Response { request_id: 0, result: Err(error) }) => {
                    self.on_hello_refused(now_ms, error);
                }
                ServerBody::Event(Event::Kicked { reason, .. }) => self.on_kicked(now_ms, reason),
                // Anything else before the Welcome is out of protocol; the server replays
                // sequenced frames after the Welcome.
                _ => {}
            }
            return;
        }
        if self.state != ConnectionState::Connected {
            return;
        }
        self.last_rx_at = now_ms;
        self.outbox.ack(ack, |_, _| {});
        match body {
            ServerBody::Welcome(_) => {}
            ServerBody::Pong { server_time_ms } => {
                self.clock_offset_ms = Some(server_time_ms.saturating_sub(now_ms));
            }
            body if seq == 0 => self.process_body(now_ms, body),
            body => {
                match self.inbox.receive(seq, body) {
                    Received::Deliver(bodies) => {
                        for body in bodies {
                            self.rx_unacked = self.rx_unacked.saturating_add(1);
                            if self.state != ConnectionState::Connected {
                                break;
                            }
                            self.process_body(now_ms, body);
                        }
                    }
                    // The server did not get our ack yet: repeat it.
                    Received::Duplicate => self.rx_unacked = self.rx_unacked.max(1),
                    Received::Held | Received::Dropped => {}
                }
                if self.state == ConnectionState::Connected && self.rx_unacked > 0 {
                    if self.rx_unacked >= ACK_EVERY {
                        self.queue_ping(now_ms);
                    } else if self.ack_at.is_none() {
                        self.ack_at = Some(now_ms.saturating_add(ACK_DELAY_MS));
                    }
                }
            }
        }
    }

    /// The clock reached (or passed) [`poll_timeout`](Self::poll_timeout): sends heartbeats,
    /// times out requests, and detects a dead transport (no Welcome in time, or a server
    /// silent past its liveness timeout; see [`ClientEvent::TransportStale`]).
    pub fn handle_timeout(&mut self, now_ms: i64) {
        if self.awaiting_welcome && self.hello_deadline.is_some_and(|d| d <= now_ms) {
            self.transport_stale(now_ms);
        }
        if self.state == ConnectionState::Connected && self.transport_up {
            if self.liveness_deadline().is_some_and(|d| d <= now_ms) {
                self.transport_stale(now_ms);
            } else if self.next_ping_at.into_iter().chain(self.ack_at).any(|t| t <= now_ms) {
                self.queue_ping(now_ms);
            }
        }
        while let Some((request_id, pending)) = self.requests.pop_expired(now_ms) {
            self.on_request_timeout(now_ms, request_id, pending);
        }
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

    /// When [`handle_timeout`](Self::handle_timeout) must next be called (ms since the epoch):
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
            consider(self.hello_deadline);
        }
        if self.state == ConnectionState::Connected && self.transport_up {
            consider(self.next_ping_at);
            consider(self.ack_at);
            consider(self.liveness_deadline());
        }
        next
    }

    // ----------------------------------------------------------------------------------------
    // Link internals

    /// Request frames awaiting the server's ack.
    pub(super) fn unacked_frames(&self) -> usize {
        self.outbox.len()
    }

    fn liveness_deadline(&self) -> Option<i64> {
        (self.liveness_ms > 0).then(|| self.last_rx_at.saturating_add(i64::from(self.liveness_ms)))
    }

    pub(super) fn set_state(&mut self, state: ConnectionState) {
        if self.state != state {
            self.state = state;
            self.events.push_back(ClientEvent::ConnectionStateChanged(state));
        }
    }

    fn frame(&mut self, seq: u64, request_id: u64, body: ClientBody) -> ClientFrame {
        self.rx_unacked = 0;
        self.ack_at = None;
        ClientFrame { seq, ack: self.inbox.last_in_order(), request_id, body }
    }

    fn queue_unsequenced(&mut self, body: ClientBody) {
        let frame = self.frame(0, 0, body);
        self.transmits.push_back(frame);
    }

    fn queue_ping(&mut self, now_ms: i64) {
        self.queue_unsequenced(ClientBody::Ping);
        self.next_ping_at =
            (self.heartbeat_ms > 0).then(|| now_ms.saturating_add(i64::from(self.heartbeat_ms)));
    }

    /// Numbers a request, keeps it until acked, sends it now when connected (else it is sent
    /// by the replay after the resume) and tracks its response.
    pub(super) fn send_request(
        &mut self,
        now_ms: i64,
        op: Op,
        request: Request,
        internal: bool,
    ) -> RequestId {
        let request_id = self.next_request_id;
        self.next_request_id = self.next_request_id.saturating_add(1);
        let seq = self.outbox.push((request_id, request.clone()));
        if self.state == ConnectionState::Connected && self.transport_up && !self.awaiting_welcome {
            let frame = self.frame(seq, request_id, ClientBody::Request(request));
            self.transmits.push_back(frame);
        }
        let deadline_ms = now_ms.saturating_add(i64::from(self.config.request_timeout_ms));
        self.requests.insert(request_id, Pending { op, deadline_ms, internal });
        request_id
    }

    fn transport_stale(&mut self, now_ms: i64) {
        self.transport_lost(now_ms);
        self.events.push_back(ClientEvent::TransportStale);
    }

    fn on_welcome(&mut self, now_ms: i64, ack: u64, w: Welcome) {
        let resumable = w.resumed
            && self.session_id.as_deref() == Some(w.session_id.as_str())
            && self.user_id.as_ref() == Some(&w.user_id);
        if !resumable {
            // A fresh session: whatever the old one held is gone.
            self.lose_session(now_ms, EndReason::NetworkError);
        }
        self.session_id = Some(w.session_id);
        self.user_id = Some(w.user_id);
        self.heartbeat_ms = match w.heartbeat_interval_ms {
            0 => self.config.default_heartbeat_interval_ms,
            n => n,
        };
        if self.heartbeat_ms > 0 {
            self.heartbeat_ms = self.heartbeat_ms.max(MIN_HEARTBEAT_MS);
        }
        self.liveness_ms = match w.liveness_timeout_ms {
            0 => 0,
            n => n.max(self.heartbeat_ms.saturating_mul(2)).max(MIN_HEARTBEAT_MS.saturating_mul(2)),
        };
        self.ice_servers = w.ice_servers;
        self.clock_offset_ms = Some(w.server_time_ms.saturating_sub(now_ms));
        self.awaiting_welcome = false;
        self.hello_deadline = None;
        self.last_rx_at = now_ms;
        self.rx_unacked = 0;
        self.next_ping_at =
            (self.heartbeat_ms > 0).then(|| now_ms.saturating_add(i64::from(self.heartbeat_ms)));
        if resumable {
            let acked = w.last_received_seq.max(ack);
            self.outbox.ack(acked, |_, _| {});
            let replay: Vec<(u64, RequestId, Request)> = self
                .outbox
                .pending()
                .filter(|(seq, _)| *seq > acked)
                .map(|(seq, (request_id, request))| (seq, *request_id, request.clone()))
                .collect();
            for (seq, request_id, request) in replay {
                let frame = self.frame(seq, request_id, ClientBody::Request(request));
                self.transmits.push_back(frame);
            }
        }
        self.set_state(ConnectionState::Connected);
    }

    fn on_hello_refused(&mut self, now_ms: i64, error: Error) {
        match error.code {
            Code::ResumeRejected => {
                // The session is gone: start over with a fresh Hello on a new transport.
                self.lose_session(now_ms, EndReason::NetworkError);
                self.transport_lost(now_ms);
                self.set_state(ConnectionState::Connecting);
                self.events.push_back(ClientEvent::TransportStale);
            }
            Code::Internal | Code::RateLimited | Code::Timeout | Code::RtcServiceUnavailable => {
                self.transport_stale(now_ms);
            }
            _ => {
                self.events.push_back(ClientEvent::ConnectionRejected(error));
                self.lose_session(now_ms, EndReason::NetworkError);
                self.transport_lost(now_ms);
                self.set_state(ConnectionState::Disconnected);
            }
        }
    }

    /// `Kicked{ENDED_BY_SERVER}` is a server going away (a graceful shutdown), not a kick:
    /// the session is gone with it, but the next server (or the same one restarted) takes a
    /// fresh Hello, so the driver reconnects with backoff. Kicks by another login or by the
    /// operator stay final.
    fn on_kicked(&mut self, now_ms: i64, reason: EndReason) {
        self.lose_session(now_ms, reason);
        self.transport_lost(now_ms);
        if reason == EndReason::EndedByServer {
            self.set_state(ConnectionState::Connecting);
            self.events.push_back(ClientEvent::TransportStale);
        } else {
            self.set_state(ConnectionState::Kicked(reason));
        }
    }

    /// Ends every call with `reason`, fails every request with `NotConnected` and forgets the
    /// session, so the next Hello starts a fresh one.
    fn lose_session(&mut self, now_ms: i64, reason: EndReason) {
        let mut ids: Vec<CallId> = Vec::with_capacity(self.calls.len());
        ids.extend(self.current.clone());
        ids.extend(self.calls.keys().filter(|id| Some(*id) != self.current.as_ref()).cloned());
        for id in ids {
            self.end_call(now_ms, &id, reason, None);
        }
        for (request_id, pending) in self.requests.drain() {
            if !pending.internal {
                self.events.push_back(ClientEvent::RequestCompleted {
                    request_id,
                    result: Err(Error::new(
                        Code::NotConnected,
                        "the session was lost before the answer came",
                    )),
                });
            }
        }
        self.current = None;
        self.early.clear();
        self.abandoned_starts.clear();
        self.session_id = None;
        self.outbox = Outbox::new();
        self.inbox = Inbox::new(MAX_HELD_FRAMES);
        self.rx_unacked = 0;
        self.ack_at = None;
    }

    /// Ends a live call here: `CallEnded`, and the call leaves the current / incoming slots.
    pub(super) fn end_call(&mut self, now_ms: i64, id: &CallId, reason: EndReason, last: Option<&CallInfo>) {
        let Some(call) = self.calls.remove(id) else { return };
        if self.current.as_ref() == Some(id) {
            self.current = None;
        }
        let session = call.end(now_ms, reason, last, &mut self.events);
        self.ended.insert(id.clone(), session.version());
    }

    // ----------------------------------------------------------------------------------------
    // Inbound: responses

    fn process_body(&mut self, now_ms: i64, body: ServerBody) {
        match body {
            ServerBody::Response(response) => self.on_response(now_ms, response),
            ServerBody::Event(event) => self.on_event(now_ms, event),
            ServerBody::Welcome(_) | ServerBody::Pong { .. } => {}
        }
    }

    fn on_response(&mut self, now_ms: i64, response: Response) {
        let Response { request_id, result } = response;
        let Some(pending) = self.requests.remove(request_id) else {
            self.on_late_response(now_ms, request_id, &result);
            return;
        };
        if !pending.internal {
            self.events.push_back(ClientEvent::RequestCompleted { request_id, result: result.clone() });
        }
        let me = self.user_id.clone();
        match (pending.op, result) {
            (Op::StartCall, Ok(ResponseBody::Started { call, .. })) => {
                let fresh = !self.calls.contains_key(&call.call_id) && !self.ended.contains(&call.call_id);
                match (fresh, me) {
                    (true, Some(me)) => {
                        self.open_call(now_ms, &call, &me, Role::Caller, None);
                        self.flush_early(now_ms, Some(&call.call_id));
                    }
                    _ => self.flush_early(now_ms, None),
                }
            }
            (Op::StartCall, _) => self.flush_early(now_ms, None),
            (Op::Accept(id), Ok(body)) => {
                if let Some(call) = self.calls.get_mut(&id) {
                    call.accepting = false;
                    if call.role == Role::Invited {
                        call.role = Role::Answered;
                    }
                    call.recompute(&mut self.events);
                    self.current = Some(id.clone());
                    match body {
                        ResponseBody::Call(info) if info.call_id == id => self.refresh(now_ms, &id, &info),
                        _ => {}
                    }
                }
                self.flush_early(now_ms, None);
            }
            (Op::Accept(id), Err(e)) => {
                if let Some(call) = self.calls.get_mut(&id) {
                    call.accepting = false;
                }
                if matches!(e.code, Code::CallNotFound | Code::CallEnded) {
                    self.end_call(now_ms, &id, EndReason::EndedByServer, None);
                }
                self.flush_early(now_ms, None);
            }
            (Op::Join(id), Ok(ResponseBody::Call(info))) => {
                if info.call_id == id && self.current.as_ref().is_none_or(|c| c == &id) {
                    if let Some(call) = self.calls.get_mut(&id) {
                        call.accepting = false;
                        call.role = Role::Answered;
                        self.current = Some(id.clone());
                        self.refresh(now_ms, &id, &info);
                    } else if let Some(me) = me {
                        self.ended.remove(&id);
                        self.open_call(now_ms, &info, &me, Role::Answered, None);
                        self.flush_early(now_ms, Some(&id));
                    }
                }
                self.flush_early(now_ms, None);
            }
            (Op::Join(id), _) => {
                if let Some(call) = self.calls.get_mut(&id) {
                    call.accepting = false;
                }
                self.flush_early(now_ms, None);
            }
            (Op::Hangup(id), result) => {
                let gone = match &result {
                    Ok(_) => true,
                    Err(e) => matches!(
                        e.code,
                        Code::NotInCall
                            | Code::CallNotFound
                            | Code::CallEnded
                            | Code::CallIdInvalid
                            | Code::Forbidden
                    ),
                };
                if gone {
                    self.end_locally(now_ms, &id);
                }
            }
            (Op::RequestChangeMediaType(id), result) => {
                if let Some(call) = self.calls.get_mut(&id) {
                    call.requesting_change = false;
                    if let Ok(ResponseBody::Transaction(tx)) = result {
                        call.own_transaction_opened(tx);
                    }
                }
            }
            (Op::Transaction(id, tx), Err(e)) if e.code == Code::TransactionIdInvalid => {
                if let Some(call) = self.calls.get_mut(&id) {
                    call.forget_transaction(&tx);
                }
            }
            (Op::SetMediaState(id, kind, disabled), Ok(_)) => {
                if let Some(call) = self.calls.get_mut(&id) {
                    call.set_local_media(kind, disabled);
                }
            }
            (Op::GetCall(id), Ok(ResponseBody::Call(info))) if info.call_id == id => {
                self.refresh(now_ms, &id, &info);
            }
            _ => {}
        }
    }

    /// A response to a request that already timed out: a call started too late is hung up so
    /// it does not ring on unanswered.
    fn on_late_response(&mut self, now_ms: i64, request_id: RequestId, result: &Result<ResponseBody, Error>) {
        let Some(pos) = self.abandoned_starts.iter().position(|id| *id == request_id) else { return };
        self.abandoned_starts.remove(pos);
        match result {
            Ok(ResponseBody::Started { call, .. })
                if !call.is_ended() && !self.calls.contains_key(&call.call_id) =>
            {
                let request = Request::Hangup { call_id: call.call_id.clone(), push: None };
                self.send_request(now_ms, Op::Hangup(call.call_id.clone()), request, true);
            }
            _ => {}
        }
    }

    fn on_request_timeout(&mut self, now_ms: i64, request_id: RequestId, pending: Pending) {
        if !pending.internal {
            self.events.push_back(ClientEvent::RequestCompleted {
                request_id,
                result: Err(Error::new(Code::Timeout, "no answer from the server in time")),
            });
        }
        match pending.op {
            Op::StartCall => {
                if self.abandoned_starts.len() >= MAX_ABANDONED_STARTS {
                    self.abandoned_starts.pop_front();
                }
                self.abandoned_starts.push_back(request_id);
                self.flush_early(now_ms, None);
            }
            Op::Accept(id) | Op::Join(id) => {
                if let Some(call) = self.calls.get_mut(&id) {
                    call.accepting = false;
                }
                self.flush_early(now_ms, None);
            }
            // The hangup stays queued and reaches the server after a resume; here the call is
            // over now.
            Op::Hangup(id) => self.end_locally(now_ms, &id),
            Op::RequestChangeMediaType(id) => {
                if let Some(call) = self.calls.get_mut(&id) {
                    call.requesting_change = false;
                }
            }
            Op::Transaction(..) | Op::SetMediaState(..) | Op::GetCall(_) | Op::Plain => {}
        }
    }

    /// Ends a call this device hung up, with the reason the server would give.
    fn end_locally(&mut self, now_ms: i64, id: &CallId) {
        if let Some(call) = self.calls.get(id) {
            let reason = call.local_hangup_reason();
            self.end_call(now_ms, id, reason, None);
        }
    }

    /// Creates a live call from a snapshot (or ends it at once when the snapshot says it is
    /// over), then processes events that arrived before it was known.
    fn open_call(&mut self, now_ms: i64, info: &CallInfo, me: &UserId, role: Role, inviter: Option<UserId>) {
        let mut call = LiveCall::new(info, me, role, inviter);
        let id = info.call_id.clone();
        let ends = LiveCall::snapshot_ends_me(info, me);
        if role != Role::Invited {
            self.current = Some(id.clone());
        }
        call.recompute(&mut self.events);
        self.calls.insert(id.clone(), call);
        if let Some(reason) = ends {
            self.end_call(now_ms, &id, reason, Some(info));
        }
    }

    /// Applies a newer snapshot to a live call; ends it when the snapshot says it is over.
    fn refresh(&mut self, now_ms: i64, id: &CallId, info: &CallInfo) {
        let Some(me) = self.user_id.clone() else { return };
        let Some(call) = self.calls.get_mut(id) else { return };
        if let Some(reason) = LiveCall::snapshot_ends_me(info, &me) {
            self.end_call(now_ms, id, reason, Some(info));
        } else {
            call.apply_snapshot(info, true, &mut self.events);
        }
    }

    /// Re-runs events held while a call-making request was in flight: those about the call the
    /// answer just `opened` are processed (they came after the request, before its answer);
    /// the others wait while such a request remains, else are dropped.
    fn flush_early(&mut self, now_ms: i64, opened: Option<&CallId>) {
        if self.early.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.early);
        let mut keep = Vec::new();
        for event in held {
            if opened.is_some_and(|id| event.call_id() == Some(id)) {
                // Events replayed in order; once one ends the call the rest are dropped.
                if opened.is_some_and(|id| self.calls.contains_key(id)) {
                    self.on_event(now_ms, event);
                }
            } else {
                keep.push(event);
            }
        }
        if self.requests.claims_current() {
            keep.append(&mut self.early);
            self.early = keep;
        }
    }

    // ----------------------------------------------------------------------------------------
    // Inbound: events

    fn on_event(&mut self, now_ms: i64, event: Event) {
        let Some(me) = self.user_id.clone() else { return };
        match event {
            Event::Kicked { reason, .. } => self.on_kicked(now_ms, reason),
            Event::CallRecord(record) => self.events.push_back(ClientEvent::ReceivedCallRecord(record)),
            Event::Summary(summary) => self.events.push_back(ClientEvent::SummaryMessage(summary)),
            Event::IncomingCall { call, inviter, extra } => self.on_incoming(&me, call, inviter, extra),
            event => {
                let Some(id) = event.call_id().cloned() else { return };
                if !self.calls.contains_key(&id) {
                    if self.requests.claims_current() && self.early.len() < MAX_EARLY_EVENTS {
                        self.early.push(event);
                    }
                    return;
                }
                self.on_call_event(now_ms, &id, event);
            }
        }
    }

    fn on_incoming(&mut self, me: &UserId, info: CallInfo, inviter: UserId, extra: String) {
        let id = info.call_id.clone();
        if let Some(call) = self.calls.get_mut(&id) {
            // A repeated invitation to a call already known: just newer information.
            if LiveCall::snapshot_ends_me(&info, me).is_none() {
                call.apply_snapshot(&info, true, &mut self.events);
            }
            return;
        }
        if LiveCall::snapshot_ends_me(&info, me).is_some() || self.calls.len() >= MAX_LIVE_CALLS {
            return;
        }
        if let Some(version) = self.ended.version(&id) {
            // Invited again into a call that ended for this user: only a newer call version
            // (a real re-invitation) opens it again.
            if info.version <= version {
                return;
            }
            self.ended.remove(&id);
        }
        let call = LiveCall::new(&info, me, Role::Invited, Some(inviter.clone()));
        let session = call.session.clone();
        self.calls.insert(id, call);
        self.events.push_back(ClientEvent::ReceivedCall { session, inviter, extra });
    }

    fn on_call_event(&mut self, now_ms: i64, id: &CallId, event: Event) {
        if let Event::CallEnded { call: info, reason } = &event {
            if &info.call_id == id {
                self.end_call(now_ms, id, *reason, Some(info));
            }
            return;
        }
        let Some(call) = self.calls.get_mut(id) else { return };
        let out = &mut self.events;
        match event {
            Event::UsersInvited { inviter, invitees, .. } => {
                call.users_invited(now_ms, &inviter, &invitees, out)
            }
            Event::ParticipantChanged { user_id, state, reason, version, .. } => {
                if call.is_stale(version) {
                    // Older than the snapshot already applied (which includes it).
                    return;
                }
                call.participant_changed(now_ms, &user_id, state, reason, out);
                if call.role == Role::Answered && self.current.is_none() {
                    // This device's answer took effect before its response arrived.
                    self.current = Some(id.clone());
                }
            }
            Event::CallTypeChanged { call_type, version, .. } => {
                if !call.is_stale(version) {
                    call.call_type_changed(call_type, out);
                }
            }
            Event::CallStarted { call_type, started_at_ms, .. } => {
                call.call_started(call_type, started_at_ms, out)
            }
            Event::MediaStateChanged { user_id, kind, disabled, .. } => {
                call.media_state_changed(now_ms, &user_id, kind, disabled, out);
            }
            Event::ChangeMediaTypeRequested { user_id, transaction_id, media_type, .. } => {
                call.change_requested(&user_id, &transaction_id, media_type, out);
            }
            Event::ChangeMediaTypeFinished {
                user_id, transaction_id, media_type, result, version, ..
            } => {
                let media_type = if call.is_stale(version) { call.session.media_type() } else { media_type };
                call.change_finished(&user_id, &transaction_id, media_type, result, out);
            }
            Event::FirstFrame { at_ms, .. } => call.first_frame(at_ms, out),
            Event::MediaSignal { from_user, from_device, payload, .. } => {
                out.push_back(ClientEvent::MediaSignal {
                    call_id: id.clone(),
                    from_user,
                    from_device,
                    payload,
                });
            }
            Event::DeliveryChanged { user_id, delivery, devices, .. } => {
                call.delivery_changed(now_ms, &user_id, delivery, devices, out);
            }
            Event::IncomingCall { .. }
            | Event::CallEnded { .. }
            | Event::CallRecord(_)
            | Event::Summary(_)
            | Event::Kicked { .. } => {}
        }
    }
}
