//! Events: the `callplus_event` object, the per-client queue behind
//! `callplus_client_poll_event`, and the dispatcher thread behind event callbacks.
//!
//! With built-in media on, the media's events (first frames, status reports, audio levels,
//! errors) join the call events in the same queue, so an app reads everything in one place.

use std::collections::VecDeque;
use std::ffi::{CString, c_char, c_void};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use ::callplus_client::{Event, EventStream, MediaEventStream, describe_event, describe_media_event};
use callplus_media::MediaEvent;
use callplus_session::EndReason;
use callplus_session::client::{ClientEvent, ConnectionState};

use crate::calls::{
    Record, Session, Summary, callplus_call_record, callplus_call_session, callplus_call_summary, record_ptr,
    session_ptr, summary_ptr,
};
use crate::enums::{
    callplus_call_type, callplus_change_media_type_result, callplus_connection_state, callplus_delivery,
    callplus_end_reason, callplus_media_kind, callplus_media_type, callplus_participant_state,
};
use crate::ffi::{
    Opaque, PanicDefault, boundary, cstring, free_boxed, opt_ptr, to_const_ptr, try_ref, with_ref,
};
use crate::result::callplus_result;
use crate::stats::{Stats, callplus_media_stats, stats_ptr};

/// Media events kept in a client's queue before the app takes them; beyond, new ones are
/// dropped (an app that never reads its events loses reports, never memory).
const MEDIA_EVENT_CAPACITY: usize = 1024;

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
    /// How far the invitation got to a callee: `call_id`, `user_id`, `delivery`.
    DeliveryChanged = 18,
    /// Built-in media: the media path to another participant's device is up (ICE and DTLS
    /// connected): `call_id`, `user_id`, `device_id`.
    PeerConnected = 19,
    /// Built-in media: a remote user's track started (`user_media_available`): `call_id`,
    /// `user_id`, `media_kind`.
    UserMediaAvailable = 20,
    /// Built-in media: the first decodable frame of a remote user's track arrived (video: a
    /// key frame): `call_id`, `user_id`, `media_kind`, `time_ms` (this machine's clock). The
    /// client reports the call's first one to the server, which sends CALL_FIRST_FRAME_TIME.
    FirstFrame = 21,
    /// Built-in media: a user's audio level, 0–100 (linear RMS; a full-scale sine is 100),
    /// about once a second: `call_id`, `user_id` (a remote user, or this user when the
    /// microphone source knows its level), `audio_level`.
    AudioLevel = 22,
    /// Built-in media: the call's status report, about once a second while a peer is
    /// connected: `call_id`, `stats`.
    MediaStats = 23,
    /// Built-in media: a remote user's media could not be received or played
    /// (`fetch_remote_media_error`): `call_id`, `user_id`, `code`.
    FetchRemoteMediaError = 24,
    /// Built-in media failed otherwise (a source could not open, a peer could not be set up):
    /// `call_id` (NULL when no call is concerned), `message`.
    MediaError = 25,
    /// Built-in media: a peer needs a key frame from the app's camera (`app_camera`): encode
    /// the next frame pushed with `callplus_client_push_video_sample` as a key frame.
    VideoKeyframeRequested = 26,
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
        18 => c"DELIVERY_CHANGED",
        19 => c"PEER_CONNECTED",
        20 => c"USER_MEDIA_AVAILABLE",
        21 => c"FIRST_FRAME",
        22 => c"AUDIO_LEVEL",
        23 => c"MEDIA_STATS",
        24 => c"FETCH_REMOTE_MEDIA_ERROR",
        25 => c"MEDIA_ERROR",
        26 => c"VIDEO_KEYFRAME_REQUESTED",
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

/// What a client's event queue holds.
#[derive(Debug)]
pub(crate) enum Queued {
    /// A call or connection event.
    Call(Event),
    /// An event of the built-in media.
    Media(MediaEvent),
    /// The app's camera is asked for a key frame.
    KeyframeRequested,
}

/// The Rust side of a `callplus_event`: the event and the C strings its accessors hand out.
pub(crate) struct EventData {
    event: Queued,
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
    stats: Option<Stats>,
}

// SAFETY: `callplus_event` pointers always point at an `EventData`.
unsafe impl Opaque for callplus_event {
    type Rust = EventData;
}

fn id(s: &impl AsRef<str>) -> Option<CString> {
    Some(cstring(s.as_ref()))
}

impl EventData {
    pub(crate) fn new(event: Queued) -> Self {
        match event {
            Queued::Call(event) => Self::from_call(event),
            Queued::Media(event) => Self::from_media(event),
            Queued::KeyframeRequested => {
                Self::empty(c"video key frame requested".into(), Queued::KeyframeRequested)
            }
        }
    }

    fn empty(description: CString, event: Queued) -> Self {
        EventData {
            description,
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
            stats: None,
            event,
        }
    }

    fn from_call(event: Event) -> Self {
        let mut d = Self::empty(cstring(&describe_event(&event)), Queued::KeyframeRequested);
        match &event {
            ClientEvent::ConnectionStateChanged(_) => {}
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
        }
        d.event = Queued::Call(event);
        d
    }

    fn from_media(event: MediaEvent) -> Self {
        let mut d = Self::empty(cstring(&describe_media_event(&event)), Queued::KeyframeRequested);
        match &event {
            MediaEvent::PeerConnected { call_id, user, device } => {
                d.call_id = id(call_id);
                d.user_id = id(user);
                d.device_id = id(device);
            }
            MediaEvent::UserMediaAvailable { call_id, user, .. }
            | MediaEvent::FirstFrame { call_id, user, .. }
            | MediaEvent::AudioLevel { call_id, user, .. }
            | MediaEvent::FetchRemoteMediaError { call_id, user, .. } => {
                d.call_id = id(call_id);
                d.user_id = id(user);
            }
            MediaEvent::Stats(stats) => {
                d.call_id = id(&stats.call_id);
                d.stats = Some(Stats::new(stats.clone()));
            }
            MediaEvent::Error { call_id, message } => {
                d.call_id = call_id.as_ref().and_then(id);
                d.message = Some(cstring(message));
            }
            // Signals are consumed by the client; later kinds are described only.
            _ => {}
        }
        d.event = Queued::Media(event);
        d
    }

    /// The call or connection event, if this is one.
    fn call(&self) -> Option<&Event> {
        match &self.event {
            Queued::Call(event) => Some(event),
            _ => None,
        }
    }

    /// The media event, if this is one.
    fn media(&self) -> Option<&MediaEvent> {
        match &self.event {
            Queued::Media(event) => Some(event),
            _ => None,
        }
    }

    fn kind(&self) -> callplus_event_type {
        use callplus_event_type as K;
        let event = match &self.event {
            Queued::Call(event) => event,
            // The media pump queues only events that have a kind.
            Queued::Media(event) => return media_kind(event).unwrap_or(K::MediaError),
            Queued::KeyframeRequested => return K::VideoKeyframeRequested,
        };
        match event {
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
            ClientEvent::DeliveryChanged { .. } => K::DeliveryChanged,
        }
    }

    fn media_kind(&self) -> callplus_media_kind {
        match self.media() {
            Some(MediaEvent::UserMediaAvailable { kind, .. } | MediaEvent::FirstFrame { kind, .. }) => {
                (*kind).into()
            }
            _ => callplus_media_kind::None,
        }
    }

    fn reason(&self) -> callplus_end_reason {
        let reason: Option<EndReason> = match self.call() {
            Some(ClientEvent::ConnectionStateChanged(ConnectionState::Kicked(r))) => Some(*r),
            Some(ClientEvent::CallEnded { reason, .. }) => Some(*reason),
            Some(ClientEvent::RemoteUserStateChanged { reason, .. }) => *reason,
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

/// The call the event is about (also for records, summaries and media events); NULL for
/// connection events, VIDEO_KEYFRAME_REQUESTED and a MEDIA_ERROR outside calls.
///
/// # Safety
/// `event` must be NULL or a live `callplus_event`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_event_call_id(event: *const callplus_event) -> *const c_char {
    // SAFETY: forwarded contract.
    unsafe { with_ref(event, |e| opt_ptr(e.call_id.as_ref())) }
}

/// The other user the event is about: the participant (REMOTE_USER_STATE_CHANGED, camera,
/// microphone, DELIVERY_CHANGED), the requester (CHANGE_MEDIA_TYPE_*), the remote user of the
/// media events (PEER_CONNECTED,
/// USER_MEDIA_AVAILABLE, FIRST_FRAME, FETCH_REMOTE_MEDIA_ERROR) and the user of AUDIO_LEVEL
/// (which may be this client's own user); NULL otherwise.
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
        with_ref(event, |e| match e.call() {
            Some(ClientEvent::RemoteUserStateChanged { state, .. }) => (*state).into(),
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
        with_ref(event, |e| match e.call() {
            Some(ClientEvent::ConnectionStateChanged(state)) => (*state).into(),
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
        with_ref(event, |e| match e.call() {
            Some(ClientEvent::CallTypeChanged { call_type, .. })
            | Some(ClientEvent::CallStartTime { call_type, .. }) => (*call_type).into(),
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
        with_ref(event, |e| match e.call() {
            Some(ClientEvent::ChangeMediaTypeRequest { media_type, .. })
            | Some(ClientEvent::ChangeMediaTypeResult { media_type, .. }) => (*media_type).into(),
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
        with_ref(event, |e| match e.call() {
            Some(ClientEvent::ChangeMediaTypeResult { result, .. }) => (*result).into(),
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
        with_ref(event, |e| match e.call() {
            Some(ClientEvent::RemoteCameraStateChanged { disabled, .. })
            | Some(ClientEvent::RemoteMicrophoneStateChanged { disabled, .. }) => *disabled,
            _ => false,
        })
    }
}

/// The time of CALL_START_TIME / CALL_FIRST_FRAME_TIME (ms since the Unix epoch, server
/// clock) and of FIRST_FRAME (this machine's clock); 0 otherwise.
///
/// # Safety
/// `event` must be NULL or a live `callplus_event`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_event_time_ms(event: *const callplus_event) -> i64 {
    // SAFETY: forwarded contract.
    unsafe {
        with_ref(event, |e| match e.call() {
            Some(ClientEvent::CallStartTime { started_at_ms, .. }) => *started_at_ms,
            Some(ClientEvent::CallFirstFrameTime { at_ms, .. }) => *at_ms,
            _ => match e.media() {
                Some(MediaEvent::FirstFrame { at_ms, .. }) => *at_ms,
                _ => 0,
            },
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
        with_ref(event, |e| match e.call() {
            Some(ClientEvent::DeliveryChanged { delivery, .. }) => (*delivery).into(),
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

/// The peer's device (PEER_CONNECTED); NULL otherwise.
///
/// # Safety
/// `event` must be NULL or a live `callplus_event`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_event_device_id(event: *const callplus_event) -> *const c_char {
    // SAFETY: forwarded contract.
    unsafe { with_ref(event, |e| opt_ptr(e.device_id.as_ref())) }
}

/// The refusal's code (CONNECTION_REJECTED), why remote media failed
/// (FETCH_REMOTE_MEDIA_ERROR: `RTC_SERVICE_UNAVAILABLE` when the connection failed,
/// `MEDIA_RESOURCE_INVALID` for a broken track); `CALLPLUS_RESULT_OK` for other events,
/// `NULL_PARAMETER` when `event` is NULL.
///
/// # Safety
/// `event` must be NULL or a live `callplus_event`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_event_code(event: *const callplus_event) -> callplus_result {
    boundary(|| {
        // SAFETY: forwarded contract.
        match unsafe { try_ref(event) } {
            Ok(e) => match (e.call(), e.media()) {
                (Some(ClientEvent::ConnectionRejected(error)), _) => callplus_result::from(error),
                (_, Some(MediaEvent::FetchRemoteMediaError { code, .. })) => {
                    callplus_result::from_code(*code)
                }
                _ => callplus_result::Ok,
            },
            Err(code) => code,
        }
    })
}

/// The server's words (CONNECTION_REJECTED) or what failed (MEDIA_ERROR); NULL otherwise.
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

/// The track kind of USER_MEDIA_AVAILABLE and FIRST_FRAME; NONE otherwise.
///
/// # Safety
/// `event` must be NULL or a live `callplus_event`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_event_media_kind(event: *const callplus_event) -> callplus_media_kind {
    // SAFETY: forwarded contract.
    unsafe { with_ref(event, EventData::media_kind) }
}

/// The level of AUDIO_LEVEL, 0–100; 0 otherwise.
///
/// # Safety
/// `event` must be NULL or a live `callplus_event`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_event_audio_level(event: *const callplus_event) -> u32 {
    // SAFETY: forwarded contract.
    unsafe {
        with_ref(event, |e| match e.media() {
            Some(MediaEvent::AudioLevel { level, .. }) => u32::from(*level),
            _ => 0,
        })
    }
}

/// The status report of MEDIA_STATS (borrowed: valid as long as the event); NULL otherwise.
///
/// # Safety
/// `event` must be NULL or a live `callplus_event`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_event_stats(event: *const callplus_event) -> *const callplus_media_stats {
    // SAFETY: forwarded contract.
    unsafe { with_ref(event, |e| e.stats.as_ref().map_or(std::ptr::null(), stats_ptr)) }
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

/// The C kind of a media event; `None` for what the client's media glue handles itself (the
/// adapter's outgoing SDP/ICE), which never reaches the app.
fn media_kind(event: &MediaEvent) -> Option<callplus_event_type> {
    use callplus_event_type as K;
    Some(match event {
        MediaEvent::PeerConnected { .. } => K::PeerConnected,
        MediaEvent::UserMediaAvailable { .. } => K::UserMediaAvailable,
        MediaEvent::FirstFrame { .. } => K::FirstFrame,
        MediaEvent::AudioLevel { .. } => K::AudioLevel,
        MediaEvent::Stats(_) => K::MediaStats,
        MediaEvent::FetchRemoteMediaError { .. } => K::FetchRemoteMediaError,
        MediaEvent::Error { .. } => K::MediaError,
        _ => return None,
    })
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
    queue: VecDeque<Queued>,
    /// How many of the queued events are media events.
    media_queued: usize,
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

impl QueueState {
    fn pop(&mut self) -> Option<Queued> {
        let event = self.queue.pop_front()?;
        if !matches!(event, Queued::Call(_)) {
            self.media_queued = self.media_queued.saturating_sub(1);
        }
        Some(event)
    }

    /// Queues a media event unless the client stopped or too many wait already.
    fn push_media(&mut self, event: Queued) -> bool {
        if self.closed || self.stopping || self.media_queued >= MEDIA_EVENT_CAPACITY {
            return false;
        }
        self.media_queued += 1;
        self.queue.push_back(event);
        true
    }
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
            self.lock().queue.push_back(Queued::Call(event));
            self.changed.notify_all();
        }
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// Moves the built-in media's events into the queue, behind the call events before them,
    /// until the client stops (runs on the client's runtime).
    pub(crate) async fn pump_media(self: Arc<Self>, mut stream: MediaEventStream) {
        while let Some(event) = stream.next().await {
            if media_kind(&event).is_none() {
                continue;
            }
            if self.lock().push_media(Queued::Media(event)) {
                self.changed.notify_all();
            }
        }
    }

    /// Tells the app that its camera should send a key frame (from the media's threads).
    pub(crate) fn keyframe_requested(&self) {
        if self.lock().push_media(Queued::KeyframeRequested) {
            self.changed.notify_all();
        }
    }

    /// The next event within `timeout`: `NoEvent` when none came, `NotConnected` once the
    /// client stopped and every event was taken, `InvalidState` while a callback is installed.
    pub(crate) fn poll(&self, timeout: Duration) -> Result<Queued, callplus_result> {
        let deadline = Instant::now().checked_add(timeout);
        let mut st = self.lock();
        loop {
            if st.callback.is_some() {
                return Err(callplus_result::InvalidState);
            }
            if let Some(event) = st.pop() {
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
                    if let Some(event) = st.pop() {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::ffi::CStr;

    use super::*;

    #[test]
    fn every_event_type_has_its_constant_name() {
        use callplus_event_type as K;
        let all = [
            K::None,
            K::ConnectionStateChanged,
            K::ConnectionRejected,
            K::ReceivedCall,
            K::RemoteUserInvited,
            K::CallConnected,
            K::CallTypeChanged,
            K::RemoteUserStateChanged,
            K::CallEnded,
            K::RemoteCameraStateChanged,
            K::RemoteMicrophoneStateChanged,
            K::ReceivedCallRecord,
            K::ChangeMediaTypeRequest,
            K::ChangeMediaTypeResult,
            K::CallStartTime,
            K::CallFirstFrameTime,
            K::SummaryMessage,
            K::DeliveryChanged,
            K::PeerConnected,
            K::UserMediaAvailable,
            K::FirstFrame,
            K::AudioLevel,
            K::MediaStats,
            K::FetchRemoteMediaError,
            K::MediaError,
            K::VideoKeyframeRequested,
        ];
        for kind in all {
            // SAFETY: the function returns a static C string.
            let name = unsafe { CStr::from_ptr(callplus_event_type_name(kind as u32)) }.to_str().unwrap();
            let debug = format!("{kind:?}");
            let mut expected = String::new();
            for (i, c) in debug.chars().enumerate() {
                if c.is_uppercase() && i > 0 {
                    expected.push('_');
                }
                expected.push(c.to_ascii_uppercase());
            }
            assert_eq!(name, expected, "{kind:?}");
        }
        // SAFETY: as above.
        let unknown = unsafe { CStr::from_ptr(callplus_event_type_name(27)) };
        assert_eq!(unknown, c"UNKNOWN");
    }

    fn media(event: MediaEvent) -> EventData {
        EventData::new(Queued::Media(event))
    }

    #[test]
    fn media_events_read_through_the_accessors() {
        let call = callplus_media::CallId::new("c1").unwrap();
        let bob = callplus_media::UserId::new("bob").unwrap();
        let first = media(MediaEvent::FirstFrame {
            call_id: call.clone(),
            user: bob.clone(),
            kind: callplus_media::MediaKind::Video,
            at_ms: 1234,
        });
        let e = to_const_ptr::<callplus_event>(&first);
        // SAFETY: `e` points at a live event.
        unsafe {
            assert_eq!(callplus_event_kind(e), callplus_event_type::FirstFrame);
            assert_eq!(CStr::from_ptr(callplus_event_call_id(e)), c"c1");
            assert_eq!(CStr::from_ptr(callplus_event_user_id(e)), c"bob");
            assert_eq!(callplus_event_media_kind(e), callplus_media_kind::Video);
            assert_eq!(callplus_event_time_ms(e), 1234);
            assert_eq!(callplus_event_audio_level(e), 0);
            assert!(callplus_event_stats(e).is_null());
        }
        let failed = media(MediaEvent::FetchRemoteMediaError {
            call_id: call.clone(),
            user: bob.clone(),
            code: callplus_session::Code::RtcServiceUnavailable,
        });
        let e = to_const_ptr::<callplus_event>(&failed);
        // SAFETY: as above.
        unsafe {
            assert_eq!(callplus_event_kind(e), callplus_event_type::FetchRemoteMediaError);
            assert_eq!(callplus_event_code(e), callplus_result::RtcServiceUnavailable);
        }
        let error = media(MediaEvent::Error { call_id: None, message: "no camera".into() });
        let e = to_const_ptr::<callplus_event>(&error);
        // SAFETY: as above.
        unsafe {
            assert_eq!(callplus_event_kind(e), callplus_event_type::MediaError);
            assert!(callplus_event_call_id(e).is_null());
            assert_eq!(CStr::from_ptr(callplus_event_message(e)), c"no camera");
        }
        let keyframe = EventData::new(Queued::KeyframeRequested);
        let e = to_const_ptr::<callplus_event>(&keyframe);
        // SAFETY: as above.
        unsafe {
            assert_eq!(callplus_event_kind(e), callplus_event_type::VideoKeyframeRequested);
            assert!(callplus_event_call_id(e).is_null());
            assert_eq!(callplus_event_media_kind(e), callplus_media_kind::None);
        }
    }

    #[test]
    fn media_events_are_bounded_in_the_queue() {
        let events = Events::default();
        for _ in 0..MEDIA_EVENT_CAPACITY + 5 {
            events.keyframe_requested();
        }
        let mut st = events.lock();
        assert_eq!(st.queue.len(), MEDIA_EVENT_CAPACITY);
        assert!(st.pop().is_some());
        assert_eq!(st.media_queued, MEDIA_EVENT_CAPACITY - 1);
        st.closed = true;
        assert!(!st.push_media(Queued::KeyframeRequested), "nothing is queued after the client stopped");
    }
}
