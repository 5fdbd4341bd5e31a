//! Events: the `callplus_event` object, the per-client queue behind
//! `callplus_client_poll_event`, and the dispatcher thread behind event callbacks.

use std::collections::VecDeque;
use std::ffi::{CString, c_char, c_void};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use callplus_session::client::{ClientEvent, ConnectionState};
use callplus_session::{EndReason, MediaPayload};
use callplus_signal::client::{Event, EventStream, describe_event};

use crate::calls::{
    Record, Session, Summary, callplus_call_record, callplus_call_session, callplus_call_summary, record_ptr,
    session_ptr, summary_ptr,
};
use crate::enums::{
    callplus_call_type, callplus_change_media_type_result, callplus_connection_state, callplus_delivery,
    callplus_end_reason, callplus_media_type, callplus_participant_state,
};
use crate::ffi::{
    Opaque, PanicDefault, boundary, cstring, free_boxed, opt_ptr, to_const_ptr, try_ref, with_ref,
};
use crate::result::callplus_result;

/// What an event is about (SPEC §4 and the connection's state). The accessors that apply to
/// each kind are listed on it; the others return NULL / 0 / false / NONE.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum callplus_event_type {
    /// Not an event (NULL event).
    None = 0,
    /// The connection state changed: `connection_state`; `reason` when KICKED.
    ConnectionStateChanged = 1,
    /// The server refused the token for good (bad, expired, unknown app): `code`, `message`.
    /// A CONNECTION_STATE_CHANGED to DISCONNECTED follows.
    ConnectionRejected = 2,
    /// This user is invited to a call (`received_call`): `session` (state INCOMING),
    /// `call_id`, `inviter`, `extra`. Answer with `callplus_client_accept` or
    /// `callplus_client_hangup`.
    ReceivedCall = 3,
    /// Others were invited into a call this user is in: `call_id`, `inviter`, `user_count` /
    /// `user_at` (the invitees).
    RemoteUserInvited = 4,
    /// The call is established on this client (`call_connected`): `session`, `call_id`.
    CallConnected = 5,
    /// A SINGLE call became MULTI: `call_id`, `call_type`.
    CallTypeChanged = 6,
    /// Another participant changed state: `call_id`, `user_id`, `participant_state`, and
    /// `reason` when the state is ENDED. RINGING is "the remote is ringing".
    RemoteUserStateChanged = 7,
    /// The call ended for this user (`call_ended`): `session`, `call_id`, `reason`.
    CallEnded = 8,
    /// Another participant's camera went on or off: `call_id`, `user_id`, `disabled`.
    RemoteCameraStateChanged = 9,
    /// Another participant's microphone went on or off: `call_id`, `user_id`, `disabled`.
    RemoteMicrophoneStateChanged = 10,
    /// A call record of this user, after every call: `record`, `call_id`.
    ReceivedCallRecord = 11,
    /// The peer asks to change the media type: `call_id`, `user_id`, `transaction_id`,
    /// `media_type`. Answer with `callplus_client_reply_change_media_type`.
    ChangeMediaTypeRequest = 12,
    /// A change-media-type transaction finished (either side's): `call_id`, `user_id` (the
    /// requester), `transaction_id`, `media_type` (after it), `change_result`.
    ChangeMediaTypeResult = 13,
    /// The call connected and billing starts: `call_id`, `call_type`, `time_ms`.
    CallStartTime = 14,
    /// The first media frame was rendered: `call_id`, `time_ms`.
    CallFirstFrameTime = 15,
    /// The end-of-call message of a SINGLE call: `summary`, `call_id`.
    SummaryMessage = 16,
    /// SDP or ICE from another participant's device (for a media adapter): `call_id`,
    /// `user_id`, `device_id`, `message` (the SDP or the candidate line).
    MediaSignal = 17,
    /// How far the invitation got to a callee: `call_id`, `user_id`, `delivery`.
    DeliveryChanged = 18,
    /// Internal bookkeeping; never delivered, listed for completeness.
    Other = 99,
}

/// The constant's name without prefix (e.g. "CALL_ENDED") of an event type number, for logs;
/// "UNKNOWN" for other numbers. Static; never free it.
#[unsafe(no_mangle)]
pub extern "C" fn callplus_event_type_name(event_type: u32) -> *const c_char {
    let name = match event_type {
        0 => c"NONE",
        1 => c"CONNECTION_STATE_CHANGED",
        2 => c"CONNECTION_REJECTED",
        3 => c"RECEIVED_CALL",
        4 => c"REMOTE_USER_INVITED",
        5 => c"CALL_CONNECTED",
        6 => c"CALL_TYPE_CHANGED",
        7 => c"REMOTE_USER_STATE_CHANGED",
        8 => c"CALL_ENDED",
        9 => c"REMOTE_CAMERA_STATE_CHANGED",
        10 => c"REMOTE_MICROPHONE_STATE_CHANGED",
        11 => c"RECEIVED_CALL_RECORD",
        12 => c"CHANGE_MEDIA_TYPE_REQUEST",
        13 => c"CHANGE_MEDIA_TYPE_RESULT",
        14 => c"CALL_START_TIME",
        15 => c"CALL_FIRST_FRAME_TIME",
        16 => c"SUMMARY_MESSAGE",
        17 => c"MEDIA_SIGNAL",
        18 => c"DELIVERY_CHANGED",
        99 => c"OTHER",
        _ => c"UNKNOWN",
    };
    name.as_ptr()
}

impl PanicDefault for callplus_event_type {
    fn panic_default() -> Self {
        callplus_event_type::None
    }
}

/// One event, owned by the caller when it came from `callplus_client_poll_event` (free it with
/// `callplus_event_free`), borrowed for the duration of the call when handed to an event
/// callback. Strings and objects read from it live as long as the event.
pub struct callplus_event {
    _private: [u8; 0],
}

/// The Rust side of a `callplus_event`: the event and the C strings its accessors hand out.
pub(crate) struct EventData {
    event: Event,
    call_id: Option<CString>,
    user_id: Option<CString>,
    inviter: Option<CString>,
    users: Vec<CString>,
    transaction_id: Option<CString>,
    device_id: Option<CString>,
    extra: Option<CString>,
    message: Option<CString>,
    description: CString,
    session: Option<Session>,
    record: Option<Record>,
    summary: Option<Summary>,
}

// SAFETY: `callplus_event` pointers always point at an `EventData`.
unsafe impl Opaque for callplus_event {
    type Rust = EventData;
}

fn id(s: &impl AsRef<str>) -> Option<CString> {
    Some(cstring(s.as_ref()))
}

impl EventData {
    pub(crate) fn new(event: Event) -> Self {
        let mut d = EventData {
            description: cstring(&describe_event(&event)),
            call_id: None,
            user_id: None,
            inviter: None,
            users: Vec::new(),
            transaction_id: None,
            device_id: None,
            extra: None,
            message: None,
            session: None,
            record: None,
            summary: None,
            event: ClientEvent::TransportStale,
        };
        match &event {
            ClientEvent::ConnectionStateChanged(_)
            | ClientEvent::TransportStale
            | ClientEvent::RequestCompleted { .. } => {}
            ClientEvent::ConnectionRejected(e) => d.message = Some(cstring(&e.message)),
            ClientEvent::ReceivedCall { session, inviter, extra } => {
                let s = Session::new(session.clone());
                d.call_id = Some(s.call_id().clone());
                d.session = Some(s);
                d.inviter = id(inviter);
                d.extra = Some(cstring(extra));
            }
            ClientEvent::RemoteUserInvited { call_id, inviter, invitees } => {
                d.call_id = id(call_id);
                d.inviter = id(inviter);
                d.users = invitees.iter().map(|u| cstring(u.as_str())).collect();
            }
            ClientEvent::CallConnected { session } | ClientEvent::CallEnded { session, .. } => {
                let s = Session::new(session.clone());
                d.call_id = Some(s.call_id().clone());
                d.session = Some(s);
            }
            ClientEvent::CallTypeChanged { call_id, .. }
            | ClientEvent::CallStartTime { call_id, .. }
            | ClientEvent::CallFirstFrameTime { call_id, .. } => d.call_id = id(call_id),
            ClientEvent::RemoteUserStateChanged { call_id, user_id, .. }
            | ClientEvent::RemoteCameraStateChanged { call_id, user_id, .. }
            | ClientEvent::RemoteMicrophoneStateChanged { call_id, user_id, .. }
            | ClientEvent::DeliveryChanged { call_id, user_id, .. } => {
                d.call_id = id(call_id);
                d.user_id = id(user_id);
            }
            ClientEvent::ReceivedCallRecord(record) => {
                let r = Record::new(record.clone());
                d.call_id = Some(r.call_id().clone());
                d.record = Some(r);
            }
            ClientEvent::ChangeMediaTypeRequest { call_id, user_id, transaction_id, .. }
            | ClientEvent::ChangeMediaTypeResult { call_id, user_id, transaction_id, .. } => {
                d.call_id = id(call_id);
                d.user_id = id(user_id);
                d.transaction_id = id(transaction_id);
            }
            ClientEvent::SummaryMessage(summary) => {
                let s = Summary::new(summary.clone());
                d.call_id = Some(s.call_id().clone());
                d.summary = Some(s);
            }
            ClientEvent::MediaSignal { call_id, from_user, from_device, payload } => {
                d.call_id = id(call_id);
                d.user_id = id(from_user);
                d.device_id = id(from_device);
                d.message = Some(cstring(match payload {
                    MediaPayload::SdpOffer(sdp) | MediaPayload::SdpAnswer(sdp) => sdp,
                    MediaPayload::IceCandidate { candidate, .. } => candidate,
                }));
            }
        }
        d.event = event;
        d
    }

    fn kind(&self) -> callplus_event_type {
        use callplus_event_type as K;
        match &self.event {
            ClientEvent::ConnectionStateChanged(_) => K::ConnectionStateChanged,
            ClientEvent::ConnectionRejected(_) => K::ConnectionRejected,
            ClientEvent::ReceivedCall { .. } => K::ReceivedCall,
            ClientEvent::RemoteUserInvited { .. } => K::RemoteUserInvited,
            ClientEvent::CallConnected { .. } => K::CallConnected,
            ClientEvent::CallTypeChanged { .. } => K::CallTypeChanged,
            ClientEvent::RemoteUserStateChanged { .. } => K::RemoteUserStateChanged,
            ClientEvent::CallEnded { .. } => K::CallEnded,
            ClientEvent::RemoteCameraStateChanged { .. } => K::RemoteCameraStateChanged,
            ClientEvent::RemoteMicrophoneStateChanged { .. } => K::RemoteMicrophoneStateChanged,
            ClientEvent::ReceivedCallRecord(_) => K::ReceivedCallRecord,
            ClientEvent::ChangeMediaTypeRequest { .. } => K::ChangeMediaTypeRequest,
            ClientEvent::ChangeMediaTypeResult { .. } => K::ChangeMediaTypeResult,
            ClientEvent::CallStartTime { .. } => K::CallStartTime,
            ClientEvent::CallFirstFrameTime { .. } => K::CallFirstFrameTime,
            ClientEvent::SummaryMessage(_) => K::SummaryMessage,
            ClientEvent::MediaSignal { .. } => K::MediaSignal,
            ClientEvent::DeliveryChanged { .. } => K::DeliveryChanged,
            ClientEvent::TransportStale | ClientEvent::RequestCompleted { .. } => K::Other,
        }
    }

    fn reason(&self) -> callplus_end_reason {
        let reason: Option<EndReason> = match &self.event {
            ClientEvent::ConnectionStateChanged(ConnectionState::Kicked(r)) => Some(*r),
            ClientEvent::CallEnded { reason, .. } => Some(*reason),
            ClientEvent::RemoteUserStateChanged { reason, .. } => *reason,
            _ => None,
        };
        crate::enums::end_reason(reason)
    }
}

/// The event's kind; NONE when `event` is NULL.
///
/// # Safety
/// `event` must be NULL or a live `callplus_event`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_event_kind(event: *const callplus_event) -> callplus_event_type {
    // SAFETY: forwarded contract.
    unsafe { with_ref(event, EventData::kind) }
}

/// A one-line English description of the event, e.g. `call c1-2 ringing at bob` (for logs).
///
/// # Safety
/// `event` must be NULL or a live `callplus_event`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_event_description(event: *const callplus_event) -> *const c_char {
    // SAFETY: forwarded contract.
    unsafe { with_ref(event, |e| e.description.as_ptr()) }
}

/// The call the event is about (also for records and summaries); NULL for connection events.
///
/// # Safety
/// `event` must be NULL or a live `callplus_event`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_event_call_id(event: *const callplus_event) -> *const c_char {
    // SAFETY: forwarded contract.
    unsafe { with_ref(event, |e| opt_ptr(e.call_id.as_ref())) }
}

/// The other user the event is about: the participant (REMOTE_USER_STATE_CHANGED, camera,
/// microphone, DELIVERY_CHANGED), the requester (CHANGE_MEDIA_TYPE_*), the sender
/// (MEDIA_SIGNAL); NULL otherwise.
///
/// # Safety
/// `event` must be NULL or a live `callplus_event`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_event_user_id(event: *const callplus_event) -> *const c_char {
    // SAFETY: forwarded contract.
    unsafe { with_ref(event, |e| opt_ptr(e.user_id.as_ref())) }
}

/// Who invited (RECEIVED_CALL, REMOTE_USER_INVITED); NULL otherwise.
///
/// # Safety
/// `event` must be NULL or a live `callplus_event`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_event_inviter(event: *const callplus_event) -> *const c_char {
    // SAFETY: forwarded contract.
    unsafe { with_ref(event, |e| opt_ptr(e.inviter.as_ref())) }
}

/// The number of users listed by the event (the invitees of REMOTE_USER_INVITED); 0 otherwise.
///
/// # Safety
/// `event` must be NULL or a live `callplus_event`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_event_user_count(event: *const callplus_event) -> usize {
    // SAFETY: forwarded contract.
    unsafe { with_ref(event, |e| e.users.len()) }
}

/// The listed user at `index`; NULL when out of range.
///
/// # Safety
/// `event` must be NULL or a live `callplus_event`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_event_user_at(event: *const callplus_event, index: usize) -> *const c_char {
    // SAFETY: forwarded contract.
    unsafe { with_ref(event, |e| opt_ptr(e.users.get(index))) }
}

/// The end reason: of CALL_ENDED (this user's), of REMOTE_USER_STATE_CHANGED to ENDED (the
/// participant's), of a CONNECTION_STATE_CHANGED to KICKED; NONE otherwise.
///
/// # Safety
/// `event` must be NULL or a live `callplus_event`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_event_reason(event: *const callplus_event) -> callplus_end_reason {
    // SAFETY: forwarded contract.
    unsafe { with_ref(event, EventData::reason) }
}

/// The participant's new state (REMOTE_USER_STATE_CHANGED); NONE otherwise.
///
/// # Safety
/// `event` must be NULL or a live `callplus_event`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_event_participant_state(
    event: *const callplus_event,
) -> callplus_participant_state {
    // SAFETY: forwarded contract.
    unsafe {
        with_ref(event, |e| match &e.event {
            ClientEvent::RemoteUserStateChanged { state, .. } => (*state).into(),
            _ => callplus_participant_state::None,
        })
    }
}

/// The new connection state (CONNECTION_STATE_CHANGED); NONE otherwise.
///
/// # Safety
/// `event` must be NULL or a live `callplus_event`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_event_connection_state(
    event: *const callplus_event,
) -> callplus_connection_state {
    // SAFETY: forwarded contract.
    unsafe {
        with_ref(event, |e| match &e.event {
            ClientEvent::ConnectionStateChanged(state) => (*state).into(),
            _ => callplus_connection_state::None,
        })
    }
}

/// The call type: CALL_TYPE_CHANGED (the new one), CALL_START_TIME, and events carrying a
/// session; NONE otherwise.
///
/// # Safety
/// `event` must be NULL or a live `callplus_event`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_event_call_type(event: *const callplus_event) -> callplus_call_type {
    // SAFETY: forwarded contract.
    unsafe {
        with_ref(event, |e| match &e.event {
            ClientEvent::CallTypeChanged { call_type, .. } | ClientEvent::CallStartTime { call_type, .. } => {
                (*call_type).into()
            }
            _ => e.session.as_ref().map_or(callplus_call_type::None, |s| s.call_type().into()),
        })
    }
}

/// The media type: CHANGE_MEDIA_TYPE_REQUEST (wanted), CHANGE_MEDIA_TYPE_RESULT (after the
/// transaction), and events carrying a session; NONE otherwise.
///
/// # Safety
/// `event` must be NULL or a live `callplus_event`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_event_media_type(event: *const callplus_event) -> callplus_media_type {
    // SAFETY: forwarded contract.
    unsafe {
        with_ref(event, |e| match &e.event {
            ClientEvent::ChangeMediaTypeRequest { media_type, .. }
            | ClientEvent::ChangeMediaTypeResult { media_type, .. } => (*media_type).into(),
            _ => e.session.as_ref().map_or(callplus_media_type::None, |s| s.media_type().into()),
        })
    }
}

/// The transaction of CHANGE_MEDIA_TYPE_REQUEST / _RESULT; NULL otherwise.
///
/// # Safety
/// `event` must be NULL or a live `callplus_event`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_event_transaction_id(event: *const callplus_event) -> *const c_char {
    // SAFETY: forwarded contract.
    unsafe { with_ref(event, |e| opt_ptr(e.transaction_id.as_ref())) }
}

/// How a CHANGE_MEDIA_TYPE_RESULT finished; NONE otherwise.
///
/// # Safety
/// `event` must be NULL or a live `callplus_event`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_event_change_result(
    event: *const callplus_event,
) -> callplus_change_media_type_result {
    // SAFETY: forwarded contract.
    unsafe {
        with_ref(event, |e| match &e.event {
            ClientEvent::ChangeMediaTypeResult { result, .. } => (*result).into(),
            _ => callplus_change_media_type_result::None,
        })
    }
}

/// Whether the camera / microphone is now off (REMOTE_CAMERA_STATE_CHANGED,
/// REMOTE_MICROPHONE_STATE_CHANGED); false otherwise.
///
/// # Safety
/// `event` must be NULL or a live `callplus_event`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_event_disabled(event: *const callplus_event) -> bool {
    // SAFETY: forwarded contract.
    unsafe {
        with_ref(event, |e| match &e.event {
            ClientEvent::RemoteCameraStateChanged { disabled, .. }
            | ClientEvent::RemoteMicrophoneStateChanged { disabled, .. } => *disabled,
            _ => false,
        })
    }
}

/// The time of CALL_START_TIME / CALL_FIRST_FRAME_TIME (ms since the Unix epoch, server
/// clock); 0 otherwise.
///
/// # Safety
/// `event` must be NULL or a live `callplus_event`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_event_time_ms(event: *const callplus_event) -> i64 {
    // SAFETY: forwarded contract.
    unsafe {
        with_ref(event, |e| match &e.event {
            ClientEvent::CallStartTime { started_at_ms, .. } => *started_at_ms,
            ClientEvent::CallFirstFrameTime { at_ms, .. } => *at_ms,
            _ => 0,
        })
    }
}

/// The delivery of DELIVERY_CHANGED; UNREACHABLE otherwise.
///
/// # Safety
/// `event` must be NULL or a live `callplus_event`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_event_delivery(event: *const callplus_event) -> callplus_delivery {
    // SAFETY: forwarded contract.
    unsafe {
        with_ref(event, |e| match &e.event {
            ClientEvent::DeliveryChanged { delivery, .. } => (*delivery).into(),
            _ => callplus_delivery::Unreachable,
        })
    }
}

/// The data the inviter attached (RECEIVED_CALL); NULL otherwise.
///
/// # Safety
/// `event` must be NULL or a live `callplus_event`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_event_extra(event: *const callplus_event) -> *const c_char {
    // SAFETY: forwarded contract.
    unsafe { with_ref(event, |e| opt_ptr(e.extra.as_ref())) }
}

/// The sender's device (MEDIA_SIGNAL); NULL otherwise.
///
/// # Safety
/// `event` must be NULL or a live `callplus_event`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_event_device_id(event: *const callplus_event) -> *const c_char {
    // SAFETY: forwarded contract.
    unsafe { with_ref(event, |e| opt_ptr(e.device_id.as_ref())) }
}

/// The refusal's code (CONNECTION_REJECTED); `CALLPLUS_RESULT_OK` for other events,
/// `NULL_PARAMETER` when `event` is NULL.
///
/// # Safety
/// `event` must be NULL or a live `callplus_event`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_event_code(event: *const callplus_event) -> callplus_result {
    boundary(|| {
        // SAFETY: forwarded contract.
        match unsafe { try_ref(event) } {
            Ok(EventData { event: ClientEvent::ConnectionRejected(error), .. }) => {
                callplus_result::from(error)
            }
            Ok(_) => callplus_result::Ok,
            Err(code) => code,
        }
    })
}

/// The server's words (CONNECTION_REJECTED) or the SDP / candidate line (MEDIA_SIGNAL); NULL
/// otherwise.
///
/// # Safety
/// `event` must be NULL or a live `callplus_event`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_event_message(event: *const callplus_event) -> *const c_char {
    // SAFETY: forwarded contract.
    unsafe { with_ref(event, |e| opt_ptr(e.message.as_ref())) }
}

/// The call session of RECEIVED_CALL, CALL_CONNECTED and CALL_ENDED (borrowed: valid as long
/// as the event); NULL otherwise.
///
/// # Safety
/// `event` must be NULL or a live `callplus_event`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_event_session(
    event: *const callplus_event,
) -> *const callplus_call_session {
    // SAFETY: forwarded contract.
    unsafe { with_ref(event, |e| e.session.as_ref().map_or(std::ptr::null(), session_ptr)) }
}

/// The record of RECEIVED_CALL_RECORD (borrowed); NULL otherwise.
///
/// # Safety
/// `event` must be NULL or a live `callplus_event`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_event_record(event: *const callplus_event) -> *const callplus_call_record {
    // SAFETY: forwarded contract.
    unsafe { with_ref(event, |e| e.record.as_ref().map_or(std::ptr::null(), record_ptr)) }
}

/// The summary of SUMMARY_MESSAGE (borrowed); NULL otherwise.
///
/// # Safety
/// `event` must be NULL or a live `callplus_event`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_event_summary(
    event: *const callplus_event,
) -> *const callplus_call_summary {
    // SAFETY: forwarded contract.
    unsafe { with_ref(event, |e| e.summary.as_ref().map_or(std::ptr::null(), summary_ptr)) }
}

/// Frees an event from `callplus_client_poll_event`. NULL is ignored. Never free the event
/// handed to a callback.
///
/// # Safety
/// `event` must be NULL or an owned `callplus_event` not freed before.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_event_free(event: *mut callplus_event) {
    // SAFETY: forwarded contract.
    boundary(|| drop(unsafe { free_boxed(event) }))
}

// ----- the queue and the dispatcher -------------------------------------------------------------

/// An event callback: called with the `user_data` given to `callplus_client_set_event_callback`
/// and an event borrowed for the duration of the call.
pub type callplus_event_callback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, event: *const callplus_event)>;

/// The callback and its user data.
#[derive(Clone, Copy)]
pub(crate) struct Callback {
    f: unsafe extern "C" fn(*mut c_void, *const callplus_event),
    user_data: *mut c_void,
}

// SAFETY: the C API documents that `user_data` is used from the dispatcher thread; the app
// vouches that this is sound when it installs the callback.
unsafe impl Send for Callback {}

#[derive(Default)]
struct QueueState {
    queue: VecDeque<Event>,
    /// The client's event stream ended: no more events will come.
    closed: bool,
    /// The client is being freed: the dispatcher stops at once.
    stopping: bool,
    callback: Option<Callback>,
    /// A callback invocation is in progress.
    in_callback: bool,
    /// The dispatcher thread, while it runs.
    dispatcher: Option<(ThreadId, JoinHandle<()>)>,
    /// The dispatcher thread has not yet seen the callback removed.
    dispatcher_running: bool,
}

/// The events of one client, between the client's runtime (which pushes) and C (which polls,
/// or gets called back).
#[derive(Default)]
pub(crate) struct Events {
    state: Mutex<QueueState>,
    changed: Condvar,
}

impl Events {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, QueueState>) -> MutexGuard<'a, QueueState> {
        self.changed.wait(guard).unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves the client's events into the queue until the client stops (runs on the client's
    /// runtime).
    pub(crate) async fn pump(self: Arc<Self>, mut stream: EventStream) {
        while let Some(event) = stream.next().await {
            match event {
                ClientEvent::TransportStale | ClientEvent::RequestCompleted { .. } => continue,
                event => self.lock().queue.push_back(event),
            }
            self.changed.notify_all();
        }
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// The next event within `timeout`: `NoEvent` when none came, `NotConnected` once the
    /// client stopped and every event was taken, `InvalidState` while a callback is installed.
    pub(crate) fn poll(&self, timeout: Duration) -> Result<Event, callplus_result> {
        let deadline = Instant::now().checked_add(timeout);
        let mut st = self.lock();
        loop {
            if st.callback.is_some() {
                return Err(callplus_result::InvalidState);
            }
            if let Some(event) = st.queue.pop_front() {
                return Ok(event);
            }
            if st.closed || st.stopping {
                return Err(callplus_result::NotConnected);
            }
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            if left.is_zero() {
                return Err(callplus_result::NoEvent);
            }
            st = self.changed.wait_timeout(st, left).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    /// Installs (or, with `None`, removes) the callback. On removal, waits until a running
    /// invocation returns (unless called from that invocation).
    pub(crate) fn set_callback(self: &Arc<Self>, callback: Option<Callback>) -> Result<(), callplus_result> {
        let me = std::thread::current().id();
        let mut st = self.lock();
        if st.stopping {
            return Err(callplus_result::NotConnected);
        }
        st.callback = callback;
        self.changed.notify_all();
        let on_dispatcher = st.dispatcher.as_ref().is_some_and(|(id, _)| *id == me);
        match callback {
            Some(_) if !st.dispatcher_running => {
                // A previous dispatcher may still be winding down; it exits without touching
                // the queue again, so it is joined (briefly) before the new one starts.
                let old = st.dispatcher.take();
                st.dispatcher_running = true;
                let events = Arc::clone(self);
                let spawned = std::thread::Builder::new()
                    .name("callplus-events".into())
                    .spawn(move || events.dispatch());
                match spawned {
                    Ok(handle) => st.dispatcher = Some((handle.thread().id(), handle)),
                    Err(_) => {
                        st.dispatcher_running = false;
                        st.callback = None;
                        return Err(callplus_result::Internal);
                    }
                }
                drop(st);
                if let Some((id, handle)) = old
                    && id != me
                {
                    let _ = handle.join();
                }
            }
            Some(_) => {}
            None => {
                while st.in_callback && !on_dispatcher {
                    st = self.wait(st);
                }
            }
        }
        Ok(())
    }

    /// The dispatcher thread: hands queued events to the callback until it is removed or the
    /// client is freed.
    fn dispatch(&self) {
        loop {
            let (callback, event) = {
                let mut st = self.lock();
                loop {
                    if st.stopping || st.callback.is_none() {
                        st.dispatcher_running = false;
                        self.changed.notify_all();
                        return;
                    }
                    if let Some(event) = st.queue.pop_front() {
                        st.in_callback = true;
                        break (st.callback, event);
                    }
                    st = self.wait(st);
                }
            };
            let data = EventData::new(event);
            if let Some(cb) = callback {
                let ptr = to_const_ptr::<callplus_event>(&data);
                // SAFETY: the app installed `f` for exactly this call; the event outlives it.
                boundary(|| unsafe { (cb.f)(cb.user_data, ptr) });
            }
            drop(data);
            self.lock().in_callback = false;
            self.changed.notify_all();
        }
    }

    /// Stops event delivery for good (the client is being freed): wakes pollers, stops the
    /// dispatcher and waits for it, unless called from the callback itself.
    pub(crate) fn stop(&self) {
        let me = std::thread::current().id();
        let mut st = self.lock();
        st.stopping = true;
        self.changed.notify_all();
        let Some((id, handle)) = st.dispatcher.take() else { return };
        if id == me {
            // Freed from inside the callback: the dispatcher exits when the callback returns.
            return;
        }
        while st.dispatcher_running {
            st = self.wait(st);
        }
        drop(st);
        let _ = handle.join();
    }
}

/// Builds the callback of a C function pointer and user data.
pub(crate) fn callback(f: callplus_event_callback, user_data: *mut c_void) -> Option<Callback> {
    f.map(|f| Callback { f, user_data })
}
