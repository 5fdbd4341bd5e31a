//! The domain form of the frames on a device's signalling stream (see `signal.proto`).
//!
//! Frames arrive as prost messages and are converted once, at the boundary (`crate::wire`), into
//! these types; every id is validated and every required part present, so the engines never
//! see a half-filled message.

use std::sync::Arc;

use super::ids::{CallId, DeviceId, TransactionId, UserId};
use super::kinds::{
    CallType, ChangeMediaTypeResult, Delivery, EndReason, MediaKind, MediaType, ParticipantState, RecordOrder,
};
use super::snapshot::{CallInfo, CallRecord, CallSummary, DeviceLeg, IceServer, PushConfig, RecordPage};
use crate::error::Error;

/// Frames a device sends.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientFrame {
    /// Sequence number; 0 for unsequenced frames (Hello, Ping, Goodbye).
    pub seq: u64,
    /// Highest server seq received in order.
    pub ack: u64,
    /// Echoed in the response; 0 when no response is expected.
    pub request_id: u64,
    /// The payload.
    pub body: ClientBody,
}

/// What a client frame carries.
// Frames live only between decoding and handling; boxing the big variant would cost an
// allocation per frame for no memory saved.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum ClientBody {
    /// Opens or resumes a session.
    Hello(Hello),
    /// Keep-alive.
    Ping,
    /// Clean end of the session.
    Goodbye,
    /// A call operation.
    Request(Request),
}

/// Opens or resumes a device session.
#[derive(Debug, Clone, PartialEq)]
pub struct Hello {
    /// The token (checked by the network layer before the switchboard sees the session).
    pub token: String,
    /// The device.
    pub device_id: DeviceId,
    /// Resume an earlier session.
    pub resume: Option<Resume>,
    /// SDK name and version.
    pub client_version: String,
}

/// Which session to resume and from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// The session id the server gave in Welcome.
    pub session_id: String,
    /// Highest server seq the device received in order.
    pub last_received_seq: u64,
}

/// SDP or ICE relayed between two devices of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaPayload {
    /// An SDP offer.
    SdpOffer(String),
    /// An SDP answer.
    SdpAnswer(String),
    /// A trickled ICE candidate.
    IceCandidate {
        /// The candidate line.
        candidate: String,
        /// Media stream id.
        sdp_mid: String,
        /// Media line index.
        sdp_mline_index: u32,
    },
}

/// Starts a call.
#[derive(Debug, Clone, PartialEq)]
pub struct StartCall {
    /// Callees (exactly one for SINGLE).
    pub callees: Vec<UserId>,
    /// SINGLE or MULTI.
    pub call_type: CallType,
    /// AUDIO or AUDIO_VIDEO.
    pub media_type: MediaType,
    /// Push settings for offline callees.
    pub push: Option<Box<PushConfig>>,
    /// Data for the callees.
    pub extra: String,
    /// Ring timeout; `None` for the server default, `Some(0)` for none.
    pub ring_timeout_ms: Option<u32>,
}

/// A call operation from a device.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Start a call.
    StartCall(StartCall),
    /// Accept an incoming call.
    Accept {
        /// The call.
        call_id: CallId,
    },
    /// Hang up, reject or cancel.
    Hangup {
        /// The call.
        call_id: CallId,
        /// Push settings for the cancel notification.
        push: Option<Box<PushConfig>>,
    },
    /// This device shows the call.
    Ringing {
        /// The call.
        call_id: CallId,
    },
    /// Join an unended MULTI call.
    JoinCall {
        /// The call.
        call_id: CallId,
    },
    /// Invite users.
    Invite {
        /// The call.
        call_id: CallId,
        /// The invitees.
        users: Vec<UserId>,
        /// Push settings.
        push: Option<Box<PushConfig>>,
        /// Data for the invitees.
        extra: String,
    },
    /// Ask to change the media type (SINGLE calls).
    RequestChangeMediaType {
        /// The call.
        call_id: CallId,
        /// The wanted type.
        media_type: MediaType,
    },
    /// Cancel a pending request.
    CancelChangeMediaType {
        /// The call.
        call_id: CallId,
        /// The transaction.
        transaction_id: TransactionId,
    },
    /// Answer the peer's request.
    ReplyChangeMediaType {
        /// The call.
        call_id: CallId,
        /// The transaction.
        transaction_id: TransactionId,
        /// Agree or refuse.
        agree: bool,
    },
    /// Camera / microphone on or off.
    SetMediaState {
        /// The call.
        call_id: CallId,
        /// Which track.
        kind: MediaKind,
        /// True when off.
        disabled: bool,
    },
    /// The first media frame was rendered.
    ReportFirstFrame {
        /// The call.
        call_id: CallId,
    },
    /// SDP / ICE to one device of a participant.
    MediaSignal {
        /// The call.
        call_id: CallId,
        /// The peer user.
        to_user: UserId,
        /// The peer device.
        to_device: DeviceId,
        /// What to relay.
        payload: MediaPayload,
    },
    /// Current state of a call.
    GetCall {
        /// The call.
        call_id: CallId,
    },
    /// A page of call records.
    GetCallRecords {
        /// -1 for the first page.
        sync_time: i64,
        /// 1..=100.
        count: u32,
        /// Order.
        order: RecordOrder,
    },
    /// Delete some records.
    DeleteCallRecords {
        /// The calls.
        call_ids: Vec<CallId>,
    },
    /// Delete all records.
    DeleteAllCallRecords,
    /// Unended MULTI calls the user is or was in.
    GetAvailableCalls,
}

impl Request {
    /// The call the request acts on, if any.
    pub fn call_id(&self) -> Option<&CallId> {
        match self {
            Request::Accept { call_id }
            | Request::Hangup { call_id, .. }
            | Request::Ringing { call_id }
            | Request::JoinCall { call_id }
            | Request::Invite { call_id, .. }
            | Request::RequestChangeMediaType { call_id, .. }
            | Request::CancelChangeMediaType { call_id, .. }
            | Request::ReplyChangeMediaType { call_id, .. }
            | Request::SetMediaState { call_id, .. }
            | Request::ReportFirstFrame { call_id }
            | Request::MediaSignal { call_id, .. }
            | Request::GetCall { call_id } => Some(call_id),
            Request::StartCall(_)
            | Request::GetCallRecords { .. }
            | Request::DeleteCallRecords { .. }
            | Request::DeleteAllCallRecords
            | Request::GetAvailableCalls => None,
        }
    }
}

/// Frames the server sends.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerFrame {
    /// Sequence number; 0 for Welcome and Pong.
    pub seq: u64,
    /// Highest client seq received in order.
    pub ack: u64,
    /// The payload.
    pub body: ServerBody,
}

/// A server frame as the switchboard hands it to its driver
/// ([`Output::Transmit`](crate::switchboard::Output::Transmit)): the seq and ack of this
/// transmission, and the body shared with the session's outbox, which keeps it until the device
/// acks it. Transmitting (or replaying after a resume) copies a pointer, not the body.
#[derive(Debug, Clone, PartialEq)]
pub struct OutFrame {
    /// Sequence number; 0 for Welcome, Pong and Kicked.
    pub seq: u64,
    /// Highest client seq received in order.
    pub ack: u64,
    /// The payload.
    pub body: Arc<ServerBody>,
}

impl OutFrame {
    /// An owned copy of the frame (a deep clone of the body).
    #[must_use]
    pub fn to_frame(&self) -> ServerFrame {
        ServerFrame { seq: self.seq, ack: self.ack, body: ServerBody::clone(&self.body) }
    }
}

impl From<ServerFrame> for OutFrame {
    fn from(frame: ServerFrame) -> Self {
        OutFrame { seq: frame.seq, ack: frame.ack, body: Arc::new(frame.body) }
    }
}

/// What a server frame carries.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerBody {
    /// Answer to Hello.
    Welcome(Welcome),
    /// Answer to Ping.
    Pong {
        /// Server clock.
        server_time_ms: i64,
    },
    /// Answer to a request.
    Response(Response),
    /// Something happened.
    Event(Event),
}

/// The server's answer to Hello.
#[derive(Debug, Clone, PartialEq)]
pub struct Welcome {
    /// The session id (give it back to resume).
    pub session_id: String,
    /// The user.
    pub user_id: UserId,
    /// Server clock.
    pub server_time_ms: i64,
    /// Whether an earlier session was resumed.
    pub resumed: bool,
    /// Ping interval.
    pub heartbeat_interval_ms: u32,
    /// Liveness timeout.
    pub liveness_timeout_ms: u32,
    /// STUN/TURN servers.
    pub ice_servers: Vec<IceServer>,
    /// Highest client seq the server processed.
    pub last_received_seq: u64,
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The request's id.
    pub request_id: u64,
    /// The result.
    pub result: Result<ResponseBody, Error>,
}

/// What a successful response carries.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseBody {
    /// Nothing beyond success.
    Empty,
    /// A call (Accept, JoinCall, GetCall).
    Call(Arc<CallInfo>),
    /// A new call and the callees found busy (StartCall).
    Started {
        /// The call.
        call: Arc<CallInfo>,
        /// Busy callees.
        busy: Vec<UserId>,
    },
    /// Busy invitees (Invite).
    Busy(Vec<UserId>),
    /// A change-media-type transaction (RequestChangeMediaType).
    Transaction(TransactionId),
    /// A page of records.
    Records(RecordPage),
    /// A list of calls.
    Calls(Vec<CallInfo>),
}

/// Something a device is told (docs/protocol.md#events).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// This user is invited.
    IncomingCall {
        /// The call.
        call: Arc<CallInfo>,
        /// Who invited.
        inviter: UserId,
        /// Attached data.
        extra: String,
    },
    /// Users were invited to a call this user is in.
    UsersInvited {
        /// The call.
        call_id: CallId,
        /// Who invited.
        inviter: UserId,
        /// Who was invited.
        invitees: Vec<UserId>,
        /// Call version.
        version: u64,
    },
    /// A participant changed state.
    ParticipantChanged {
        /// The call.
        call_id: CallId,
        /// The participant.
        user_id: UserId,
        /// New state.
        state: ParticipantState,
        /// Reason, for `Ended`.
        reason: Option<EndReason>,
        /// Call version.
        version: u64,
        /// The device the participant is in the call on (set for `Connecting` and `OnCall`).
        device_id: Option<DeviceId>,
    },
    /// SINGLE became MULTI.
    CallTypeChanged {
        /// The call.
        call_id: CallId,
        /// New type.
        call_type: CallType,
        /// Call version.
        version: u64,
    },
    /// The first two participants connected.
    CallStarted {
        /// The call.
        call_id: CallId,
        /// Type at the time.
        call_type: CallType,
        /// When.
        started_at_ms: i64,
        /// Call version.
        version: u64,
    },
    /// The call ended for the recipient.
    CallEnded {
        /// The call as it is now.
        call: Arc<CallInfo>,
        /// Why, for the recipient.
        reason: EndReason,
    },
    /// Camera / microphone of a participant.
    MediaStateChanged {
        /// The call.
        call_id: CallId,
        /// The participant.
        user_id: UserId,
        /// Which track.
        kind: MediaKind,
        /// True when off.
        disabled: bool,
    },
    /// The peer asks to change the media type.
    ChangeMediaTypeRequested {
        /// The call.
        call_id: CallId,
        /// The requester.
        user_id: UserId,
        /// The transaction.
        transaction_id: TransactionId,
        /// Wanted type.
        media_type: MediaType,
    },
    /// A change-media-type transaction finished.
    ChangeMediaTypeFinished {
        /// The call.
        call_id: CallId,
        /// The requester.
        user_id: UserId,
        /// The transaction.
        transaction_id: TransactionId,
        /// Media type after the transaction.
        media_type: MediaType,
        /// Outcome.
        result: ChangeMediaTypeResult,
        /// Call version.
        version: u64,
    },
    /// First media frame time.
    FirstFrame {
        /// The call.
        call_id: CallId,
        /// When.
        at_ms: i64,
    },
    /// A call record for this user.
    CallRecord(CallRecord),
    /// SINGLE-call summary.
    Summary(CallSummary),
    /// SDP / ICE from another device.
    MediaSignal {
        /// The call.
        call_id: CallId,
        /// Sender user.
        from_user: UserId,
        /// Sender device.
        from_device: DeviceId,
        /// Payload.
        payload: MediaPayload,
    },
    /// Where this device's media of a MULTI call goes (`None`: mesh).
    MediaRoute {
        /// The call.
        call_id: CallId,
        /// The SFU's address and this device's token, or `None` for a mesh.
        sfu: Option<SfuRoute>,
    },
    /// Invitation progress for one callee.
    DeliveryChanged {
        /// The call.
        call_id: CallId,
        /// The callee.
        user_id: UserId,
        /// Best delivery.
        delivery: Delivery,
        /// Per device.
        devices: Vec<DeviceLeg>,
    },
    /// The server closes this session.
    Kicked {
        /// Why.
        reason: EndReason,
        /// Explanation.
        message: String,
    },
}

/// A call's media through a selective forwarding unit: where this device's media signals go
/// (the SFU's signalling address) and the token its first offer carries.
#[derive(Clone, PartialEq, Eq)]
pub struct SfuRoute {
    /// The SFU's signalling user id.
    pub user_id: UserId,
    /// The SFU's signalling device id.
    pub device_id: DeviceId,
    /// This (call, user, device)'s media token.
    pub token: String,
}

impl std::fmt::Debug for SfuRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a credential: not logged.
        f.debug_struct("SfuRoute")
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

impl Event {
    /// The call the event is about, if any.
    pub fn call_id(&self) -> Option<&CallId> {
        match self {
            Event::IncomingCall { call, .. } | Event::CallEnded { call, .. } => Some(&call.call_id),
            Event::UsersInvited { call_id, .. }
            | Event::ParticipantChanged { call_id, .. }
            | Event::CallTypeChanged { call_id, .. }
            | Event::CallStarted { call_id, .. }
            | Event::MediaStateChanged { call_id, .. }
            | Event::ChangeMediaTypeRequested { call_id, .. }
            | Event::ChangeMediaTypeFinished { call_id, .. }
            | Event::FirstFrame { call_id, .. }
            | Event::MediaSignal { call_id, .. }
            | Event::MediaRoute { call_id, .. }
            | Event::DeliveryChanged { call_id, .. } => Some(call_id),
            Event::CallRecord(record) => Some(&record.call.call_id),
            Event::Summary(summary) => Some(&summary.call_id),
            Event::Kicked { .. } => None,
        }
    }
}
