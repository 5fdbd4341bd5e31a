//! The `callplus_event` object: what an event carries, and the accessors C reads it with.

use std::ffi::{CString, c_char};
use std::sync::Arc;

use ::callplus_client::{Event, describe_event, describe_media_event};
use callplus_media::MediaEvent;
use callplus_session::EndReason;
use callplus_session::client::{ClientEvent, ConnectionState};

use super::kind::{callplus_event_type, media_kind};
use crate::calls::{
    Record, Session, Summary, callplus_call_record, callplus_call_session, callplus_call_summary, record_ptr,
    session_ptr, summary_ptr,
};
use crate::enums::{
    callplus_call_type, callplus_change_media_type_result, callplus_connection_state, callplus_delivery,
    callplus_end_reason, callplus_media_kind, callplus_media_type, callplus_participant_state,
};
use crate::ffi::{Opaque, boundary, cstring, free_boxed, opt_ptr, try_ref, with_ref};
use crate::result::callplus_result;
use crate::server_clock::ServerClock;
use crate::stats::{Stats, callplus_media_stats, stats_ptr};

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
    /// The C side of `event`; its session, if any, reads talk time on `clock` (the client's).
    pub(crate) fn new(event: Queued, clock: &Arc<ServerClock>) -> Self {
        match event {
            Queued::Call(event) => Self::from_call(event, clock),
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

    fn from_call(event: Event, clock: &Arc<ServerClock>) -> Self {
        let mut d = Self::empty(cstring(&describe_event(&event)), Queued::KeyframeRequested);
        match &event {
            ClientEvent::ConnectionStateChanged(_) => {}
            ClientEvent::ConnectionRejected(e) => d.message = Some(cstring(&e.message)),
            ClientEvent::ReceivedCall { session, inviter, extra } => {
                let s = Session::new(session.clone(), Arc::clone(clock));
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
                let s = Session::new(session.clone(), Arc::clone(clock));
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
            MediaEvent::ActiveSpeaker { call_id, user } => {
                d.call_id = id(call_id);
                d.user_id = user.as_ref().and_then(id);
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
/// USER_MEDIA_AVAILABLE, FIRST_FRAME, FETCH_REMOTE_MEDIA_ERROR), the user of AUDIO_LEVEL
/// (which may be this client's own user) and the speaker of ACTIVE_SPEAKER (which may be this
/// client's own user; NULL for none); NULL otherwise.
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
