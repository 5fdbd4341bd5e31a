//! What the client engine tells the app ([events](docs/protocol.md#events)) and the state of its connection.

use crate::error::Error;
use crate::model::ids::{CallId, TransactionId, UserId};
use crate::model::kinds::{
    CallType, ChangeMediaTypeResult, Delivery, EndReason, MediaType, ParticipantState,
};
use crate::model::message::ResponseBody;
use crate::model::snapshot::{CallRecord, CallSummary};

use super::session::CallSession;

/// Identifies one request of a [`ClientEngine`](super::ClientEngine); unique for the engine's
/// lifetime (never reused, not even across sessions).
pub type RequestId = u64;

/// The state of the engine's connection to the server.
///
/// ```text
/// Idle ──transport_connected──▶ Connecting ──Welcome──▶ Connected
///                                   ▲                     │ transport_lost / silence
///      (resume rejected) ───────────┘                     ▼
///                               Connected ◀──Welcome── Reconnecting
/// any ──disconnect──▶ Disconnected        any ──Kicked──▶ Kicked(reason)
/// any ──Hello refused (token …)──▶ Disconnected
/// any ──server shutting down (Kicked{ENDED_BY_SERVER})──▶ Connecting (reconnect with backoff)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionState {
    /// Never connected.
    Idle,
    /// A transport is up (or being set up) and no session exists yet: waiting for the first
    /// Welcome. Requests fail with `NotConnected`.
    Connecting,
    /// A session is established.
    Connected,
    /// The transport broke while a session existed; the driver reconnects and the engine
    /// resumes the session. Requests made now are queued and sent after the resume.
    Reconnecting,
    /// The app disconnected, or the server refused the Hello for good (see
    /// [`ClientEvent::ConnectionRejected`]). The driver must not reconnect on its own.
    Disconnected,
    /// The server closed the session for good (another login, an operator). The driver must
    /// not reconnect on its own. A server shutting down is not a kick: its devices go back to
    /// `Connecting` with [`DriverEvent::TransportStale`] and reconnect.
    Kicked(EndReason),
}

impl ConnectionState {
    /// Whether requests are accepted now (sent at once when connected, queued while
    /// reconnecting).
    pub fn accepts_requests(self) -> bool {
        matches!(self, ConnectionState::Connected | ConnectionState::Reconnecting)
    }
}

/// Something the app is told (`docs/protocol.md`, "Events"). Drained with
/// [`ClientEngine::poll_event`](super::ClientEngine::poll_event); a driver hands every one to
/// the app and filters none. What only the driver needs comes out separately
/// ([`DriverEvent`], [`MediaCommand`](super::MediaCommand)).
///
/// Invariant: after [`ClientEvent::CallEnded`] for a call, no event whose
/// [`call_id`](ClientEvent::call_id) names that call follows, unless the user is in that call
/// again (a new [`ClientEvent::ReceivedCall`] for a re-invitation, or a successful
/// `join_call`). Records and summaries, which describe finished calls, are outside this rule.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// The connection state changed.
    ConnectionStateChanged(ConnectionState),
    /// The server refused the Hello for a reason reconnecting will not fix (bad or expired
    /// token, unknown app, …). Followed by `ConnectionStateChanged(Disconnected)`.
    ConnectionRejected(Error),
    /// This user is invited to a call (`received_call`). The session is in state `Incoming`.
    ReceivedCall {
        /// The call.
        session: CallSession,
        /// Who invited this user.
        inviter: UserId,
        /// Data the inviter attached to the invitation.
        extra: String,
    },
    /// Other users were invited into a call this user is in (`remote_user_invited`).
    RemoteUserInvited {
        /// The call.
        call_id: CallId,
        /// Who invited.
        inviter: UserId,
        /// Who was invited.
        invitees: Vec<UserId>,
    },
    /// The call is established on this device (`call_connected`): the media adapter starts.
    CallConnected {
        /// The call, in state `OnCall`.
        session: CallSession,
    },
    /// A SINGLE call became MULTI (`call_type_changed`).
    CallTypeChanged {
        /// The call.
        call_id: CallId,
        /// The new type.
        call_type: CallType,
    },
    /// Another participant changed state (`remote_user_state_changed`); `Ringing` is "the
    /// remote is ringing".
    RemoteUserStateChanged {
        /// The call.
        call_id: CallId,
        /// The participant.
        user_id: UserId,
        /// The new state.
        state: ParticipantState,
        /// Why, when the state is `Ended`.
        reason: Option<EndReason>,
    },
    /// The call ended for this user (`call_ended`). The session is in state `Ended` and no
    /// longer current or incoming.
    CallEnded {
        /// The call as it ended.
        session: CallSession,
        /// Why, from this user's point of view.
        reason: EndReason,
    },
    /// Another participant's camera went on or off.
    RemoteCameraStateChanged {
        /// The call.
        call_id: CallId,
        /// The participant.
        user_id: UserId,
        /// True when off.
        disabled: bool,
    },
    /// Another participant's microphone went on or off.
    RemoteMicrophoneStateChanged {
        /// The call.
        call_id: CallId,
        /// The participant.
        user_id: UserId,
        /// True when off.
        disabled: bool,
    },
    /// A call record of this user (after every call).
    ReceivedCallRecord(CallRecord),
    /// The peer asks to change the media type; answer with `reply_change_media_type`.
    ChangeMediaTypeRequest {
        /// The call.
        call_id: CallId,
        /// The requester.
        user_id: UserId,
        /// The transaction.
        transaction_id: TransactionId,
        /// The wanted media type.
        media_type: MediaType,
    },
    /// A change-media-type transaction finished (either side's).
    ChangeMediaTypeResult {
        /// The call.
        call_id: CallId,
        /// The requester.
        user_id: UserId,
        /// The transaction.
        transaction_id: TransactionId,
        /// The call's media type after the transaction.
        media_type: MediaType,
        /// How it finished.
        result: ChangeMediaTypeResult,
    },
    /// The call connected: billing starts (`call_start_time`).
    CallStartTime {
        /// The call.
        call_id: CallId,
        /// Its type at the time.
        call_type: CallType,
        /// When, by the server's clock.
        started_at_ms: i64,
    },
    /// The first media frame of the call was rendered (`call_first_frame_time`).
    CallFirstFrameTime {
        /// The call.
        call_id: CallId,
        /// When, by the server's clock.
        at_ms: i64,
    },
    /// The end-of-call message of a SINGLE call (`summary_message`).
    SummaryMessage(CallSummary),
    /// How far the invitation got to a callee: unreachable, pushed, delivered or ringing.
    DeliveryChanged {
        /// The call.
        call_id: CallId,
        /// The callee.
        user_id: UserId,
        /// Best delivery over the callee's devices (per device: the participant's `devices` in
        /// the session).
        delivery: Delivery,
    },
}

impl ClientEvent {
    /// The live call this event is about; `None` for connection and request events, and for
    /// records and summaries (which describe finished calls).
    pub fn call_id(&self) -> Option<&CallId> {
        match self {
            ClientEvent::ReceivedCall { session, .. }
            | ClientEvent::CallConnected { session }
            | ClientEvent::CallEnded { session, .. } => Some(session.call_id()),
            ClientEvent::RemoteUserInvited { call_id, .. }
            | ClientEvent::CallTypeChanged { call_id, .. }
            | ClientEvent::RemoteUserStateChanged { call_id, .. }
            | ClientEvent::RemoteCameraStateChanged { call_id, .. }
            | ClientEvent::RemoteMicrophoneStateChanged { call_id, .. }
            | ClientEvent::ChangeMediaTypeRequest { call_id, .. }
            | ClientEvent::ChangeMediaTypeResult { call_id, .. }
            | ClientEvent::CallStartTime { call_id, .. }
            | ClientEvent::CallFirstFrameTime { call_id, .. }
            | ClientEvent::DeliveryChanged { call_id, .. } => Some(call_id),
            ClientEvent::ConnectionStateChanged(_)
            | ClientEvent::ConnectionRejected(_)
            | ClientEvent::ReceivedCallRecord(_)
            | ClientEvent::SummaryMessage(_) => None,
        }
    }
}

/// What the engine tells its driver, apart from the app's events and the media commands.
/// Drained with [`ClientEngine::poll_driver_event`](super::ClientEngine::poll_driver_event).
#[derive(Debug, Clone, PartialEq)]
pub enum DriverEvent {
    /// The transport looks dead (no Welcome within the request timeout, or the server was
    /// silent past its liveness timeout, or it refused a resume and closes the stream, or it is
    /// shutting down). The engine already treats the transport as lost; the driver must close
    /// it and reconnect (with backoff) unless the state is `Disconnected` or `Kicked`.
    TransportStale,
    /// A request the app made finished: the server answered, it timed out (`Timeout`), or the
    /// session it belonged to is gone (`NotConnected`). The driver answers whoever awaits
    /// `request_id`.
    RequestCompleted {
        /// The id the operation returned.
        request_id: RequestId,
        /// The server's answer, or why there is none.
        result: Result<ResponseBody, Error>,
    },
}
