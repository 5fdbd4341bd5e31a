//! Calls as C sees them: sessions, call snapshots, records, record pages and summaries.
//!
//! Every object keeps the C strings its accessors hand out, so a returned `const char *` is
//! valid exactly as long as the object it came from.

use std::ffi::{CString, c_char};
use std::sync::Arc;

use callplus_session::client::CallSession;
use callplus_session::{CallInfo, CallRecord, CallSummary, CallType, MediaType, Participant, RecordPage};

use crate::enums::{
    callplus_call_state, callplus_call_type, callplus_delivery, callplus_direction, callplus_end_reason,
    callplus_media_type, callplus_participant_state, end_reason,
};
use crate::ffi::{Opaque, boundary, cstring, free_boxed, opt_ptr, to_boxed, to_const_ptr, with_ref};
use crate::server_clock::ServerClock;

/// The participants of a call with their ids as C strings.
pub(crate) struct Participants {
    list: Vec<Participant>,
    ids: Vec<CString>,
}

impl Participants {
    fn new(list: &[Participant]) -> Self {
        Participants { list: list.to_vec(), ids: list.iter().map(|p| cstring(p.user_id.as_str())).collect() }
    }

    fn user_id(&self, index: usize) -> *const c_char {
        opt_ptr(self.ids.get(index))
    }

    fn state(&self, index: usize) -> callplus_participant_state {
        self.list.get(index).map_or(callplus_participant_state::None, |p| p.state.into())
    }

    fn reason(&self, index: usize) -> callplus_end_reason {
        self.list.get(index).map_or(callplus_end_reason::None, |p| end_reason(p.reason))
    }

    fn camera_disabled(&self, index: usize) -> bool {
        self.list.get(index).is_some_and(|p| p.camera_disabled)
    }

    fn microphone_disabled(&self, index: usize) -> bool {
        self.list.get(index).is_some_and(|p| p.microphone_disabled)
    }

    fn delivery(&self, index: usize) -> callplus_delivery {
        self.list.get(index).map_or(callplus_delivery::Unreachable, |p| p.delivery.into())
    }
}

// ----- callplus_call_session ------------------------------------------------------------------

/// One call as this client sees it (CallPlus's session): id, state, type, media type,
/// participants with their states, creator, inviter, times. A snapshot: it does not change
/// after it was taken. Owned ones (from `callplus_client_current_call`) are freed with
/// `callplus_call_session_free`; borrowed ones (from `callplus_event_session`) live as long as
/// their event.
pub struct callplus_call_session {
    _private: [u8; 0],
}

/// The Rust side of a `callplus_call_session`.
pub(crate) struct Session {
    inner: CallSession,
    call_id: CString,
    local_user: CString,
    creator: CString,
    inviter: Option<CString>,
    extra: CString,
    participants: Participants,
    /// The client's server clock, which the call's times are on (for the talk time so far).
    clock: Arc<ServerClock>,
}

impl Session {
    pub(crate) fn new(inner: CallSession, clock: Arc<ServerClock>) -> Self {
        Session {
            clock,
            call_id: cstring(inner.call_id().as_str()),
            local_user: cstring(inner.local_user().as_str()),
            creator: cstring(inner.creator().as_str()),
            inviter: inner.inviter().map(|u| cstring(u.as_str())),
            extra: cstring(inner.extra()),
            participants: Participants::new(inner.participants()),
            inner,
        }
    }

    pub(crate) fn call_id(&self) -> &CString {
        &self.call_id
    }

    pub(crate) fn call_type(&self) -> CallType {
        self.inner.call_type()
    }

    pub(crate) fn media_type(&self) -> MediaType {
        self.inner.media_type()
    }
}

// SAFETY: `callplus_call_session` pointers always point at a `Session`.
unsafe impl Opaque for callplus_call_session {
    type Rust = Session;
}

/// Hands an owned session to C.
pub(crate) fn new_session(session: CallSession, clock: Arc<ServerClock>) -> *mut callplus_call_session {
    to_boxed::<callplus_call_session>(Session::new(session, clock))
}

/// A borrowed pointer to a session.
pub(crate) fn session_ptr(session: &Session) -> *const callplus_call_session {
    to_const_ptr::<callplus_call_session>(session)
}

/// The call's id (NUL-terminated; valid as long as `s`). NULL when `s` is NULL.
///
/// # Safety
/// `s` must be NULL or a live `callplus_call_session`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_session_call_id(s: *const callplus_call_session) -> *const c_char {
    // SAFETY: forwarded contract.
    unsafe { with_ref(s, |s| s.call_id.as_ptr()) }
}

/// The user this client acts as.
///
/// # Safety
/// `s` must be NULL or a live `callplus_call_session`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_session_local_user_id(
    s: *const callplus_call_session,
) -> *const c_char {
    // SAFETY: forwarded contract.
    unsafe { with_ref(s, |s| s.local_user.as_ptr()) }
}

/// The call's state as this user sees it.
///
/// # Safety
/// `s` must be NULL or a live `callplus_call_session`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_session_state(s: *const callplus_call_session) -> callplus_call_state {
    // SAFETY: forwarded contract.
    unsafe { with_ref(s, |s| s.inner.state().into()) }
}

/// SINGLE or MULTI.
///
/// # Safety
/// `s` must be NULL or a live `callplus_call_session`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_session_call_type(
    s: *const callplus_call_session,
) -> callplus_call_type {
    // SAFETY: forwarded contract.
    unsafe { with_ref(s, |s| s.inner.call_type().into()) }
}

/// AUDIO or AUDIO_VIDEO.
///
/// # Safety
/// `s` must be NULL or a live `callplus_call_session`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_session_media_type(
    s: *const callplus_call_session,
) -> callplus_media_type {
    // SAFETY: forwarded contract.
    unsafe { with_ref(s, |s| s.inner.media_type().into()) }
}

/// Who started the call.
///
/// # Safety
/// `s` must be NULL or a live `callplus_call_session`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_session_creator(s: *const callplus_call_session) -> *const c_char {
    // SAFETY: forwarded contract.
    unsafe { with_ref(s, |s| s.creator.as_ptr()) }
}

/// Who invited this user; NULL when this user created the call.
///
/// # Safety
/// `s` must be NULL or a live `callplus_call_session`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_session_inviter(s: *const callplus_call_session) -> *const c_char {
    // SAFETY: forwarded contract.
    unsafe { with_ref(s, |s| opt_ptr(s.inviter.as_ref())) }
}

/// The data the caller attached to the call ("" when none).
///
/// # Safety
/// `s` must be NULL or a live `callplus_call_session`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_session_extra(s: *const callplus_call_session) -> *const c_char {
    // SAFETY: forwarded contract.
    unsafe { with_ref(s, |s| s.extra.as_ptr()) }
}

/// Whether this client placed the call.
///
/// # Safety
/// `s` must be NULL or a live `callplus_call_session`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_session_is_outgoing(s: *const callplus_call_session) -> bool {
    // SAFETY: forwarded contract.
    unsafe { with_ref(s, |s| s.inner.is_outgoing()) }
}

/// Whether this user's camera is on.
///
/// # Safety
/// `s` must be NULL or a live `callplus_call_session`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_session_camera_enabled(s: *const callplus_call_session) -> bool {
    // SAFETY: forwarded contract.
    unsafe { with_ref(s, |s| s.inner.camera_enabled()) }
}

/// Whether this user's microphone is on.
///
/// # Safety
/// `s` must be NULL or a live `callplus_call_session`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_session_microphone_enabled(s: *const callplus_call_session) -> bool {
    // SAFETY: forwarded contract.
    unsafe { with_ref(s, |s| s.inner.microphone_enabled()) }
}

/// When the call was created (ms since the Unix epoch, server clock).
///
/// # Safety
/// `s` must be NULL or a live `callplus_call_session`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_session_created_at_ms(s: *const callplus_call_session) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { with_ref(s, |s| s.inner.created_at_ms()) }
}

/// When the call connected (billing starts); 0 when it has not.
///
/// # Safety
/// `s` must be NULL or a live `callplus_call_session`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_session_started_at_ms(s: *const callplus_call_session) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { with_ref(s, |s| s.inner.started_at_ms().unwrap_or(0)) }
}

/// When the first media frame was rendered; 0 when not yet.
///
/// # Safety
/// `s` must be NULL or a live `callplus_call_session`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_session_first_frame_at_ms(s: *const callplus_call_session) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { with_ref(s, |s| s.inner.first_frame_at_ms().unwrap_or(0)) }
}

/// When the call ended for this user; 0 while it lasts.
///
/// # Safety
/// `s` must be NULL or a live `callplus_call_session`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_session_ended_at_ms(s: *const callplus_call_session) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { with_ref(s, |s| s.inner.ended_at_ms().unwrap_or(0)) }
}

/// Why the call ended for this user; NONE while it lasts.
///
/// # Safety
/// `s` must be NULL or a live `callplus_call_session`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_session_end_reason(
    s: *const callplus_call_session,
) -> callplus_end_reason {
    // SAFETY: forwarded contract.
    unsafe { with_ref(s, |s| end_reason(s.inner.end_reason())) }
}

/// Talk time in ms: from the start to the end, or to now while the call lasts; 0 when it never
/// connected. Now is the server's clock, which the start time is on: the reading of
/// `callplus_client_server_time_ms` of the client the session came from, so a machine whose
/// clock is off still counts the right talk time. (After that client was freed: its last
/// reading, counted on by this machine's monotonic clock.) Never negative.
///
/// # Safety
/// `s` must be NULL or a live `callplus_call_session`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_session_duration_ms(s: *const callplus_call_session) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { with_ref(s, |s| s.inner.duration_ms(s.clock.now_ms())) }
}

/// Talk time in ms as of `server_now_ms` (the server's clock, from
/// `callplus_client_server_time_ms`): from the start to the end, or to `server_now_ms` while the
/// call lasts; 0 when it never connected. Never negative.
///
/// ```c
/// int64_t server_now = 0;
/// callplus_client_server_time_ms(client, &server_now);
/// int64_t talked = callplus_call_session_duration_at_ms(session, server_now);
/// ```
///
/// # Safety
/// `s` must be NULL or a live `callplus_call_session`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_session_duration_at_ms(
    s: *const callplus_call_session,
    server_now_ms: i64,
) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { with_ref(s, |s| s.inner.duration_ms(server_now_ms)) }
}

/// The number of participants (everyone ever invited, the creator first).
///
/// # Safety
/// `s` must be NULL or a live `callplus_call_session`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_session_participant_count(s: *const callplus_call_session) -> usize {
    // SAFETY: forwarded contract.
    unsafe { with_ref(s, |s| s.participants.list.len()) }
}

/// The user id of participant `index`; NULL when out of range.
///
/// # Safety
/// `s` must be NULL or a live `callplus_call_session`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_session_participant_user_id(
    s: *const callplus_call_session,
    index: usize,
) -> *const c_char {
    // SAFETY: forwarded contract.
    unsafe { with_ref(s, |s| s.participants.user_id(index)) }
}

/// The state of participant `index`; NONE when out of range.
///
/// # Safety
/// `s` must be NULL or a live `callplus_call_session`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_session_participant_state(
    s: *const callplus_call_session,
    index: usize,
) -> callplus_participant_state {
    // SAFETY: forwarded contract.
    unsafe { with_ref(s, |s| s.participants.state(index)) }
}

/// Why participant `index` ended (its own point of view); NONE while it is in the call or
/// when out of range.
///
/// # Safety
/// `s` must be NULL or a live `callplus_call_session`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_session_participant_reason(
    s: *const callplus_call_session,
    index: usize,
) -> callplus_end_reason {
    // SAFETY: forwarded contract.
    unsafe { with_ref(s, |s| s.participants.reason(index)) }
}

/// Whether participant `index` has turned the camera off (as of the snapshot: a user who
/// joins later learns it here, as the others learned it from `REMOTE_CAMERA_STATE_CHANGED`);
/// false when out of range.
///
/// # Safety
/// `s` must be NULL or a live `callplus_call_session`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_session_participant_camera_disabled(
    s: *const callplus_call_session,
    index: usize,
) -> bool {
    // SAFETY: forwarded contract.
    unsafe { with_ref(s, |s| s.participants.camera_disabled(index)) }
}

/// Whether participant `index` has turned the microphone off (as of the snapshot); false when
/// out of range.
///
/// # Safety
/// `s` must be NULL or a live `callplus_call_session`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_session_participant_microphone_disabled(
    s: *const callplus_call_session,
    index: usize,
) -> bool {
    // SAFETY: forwarded contract.
    unsafe { with_ref(s, |s| s.participants.microphone_disabled(index)) }
}

/// How far the invitation got to participant `index`, the best over the user's devices (as
/// `DELIVERY_CHANGED` reports it); UNREACHABLE when out of range.
///
/// # Safety
/// `s` must be NULL or a live `callplus_call_session`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_session_participant_delivery(
    s: *const callplus_call_session,
    index: usize,
) -> callplus_delivery {
    // SAFETY: forwarded contract.
    unsafe { with_ref(s, |s| s.participants.delivery(index)) }
}

/// Frees a session from `callplus_client_current_call`. NULL is ignored. Never pass a
/// session borrowed from an event.
///
/// # Safety
/// `s` must be NULL or an owned `callplus_call_session` not freed before.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_session_free(s: *mut callplus_call_session) {
    // SAFETY: forwarded contract.
    boundary(|| drop(unsafe { free_boxed(s) }))
}

// ----- callplus_call_info ---------------------------------------------------------------------

/// A snapshot of a call as the server knows it. Owned when it comes from
/// `callplus_client_get_call` (free it with `callplus_call_info_free`); otherwise borrowed from
/// the record or list it came from.
pub struct callplus_call_info {
    _private: [u8; 0],
}

/// The Rust side of a `callplus_call_info`.
pub(crate) struct Info {
    inner: CallInfo,
    call_id: CString,
    creator: CString,
    extra: CString,
    participants: Participants,
}

impl Info {
    fn new(inner: CallInfo) -> Self {
        Info {
            call_id: cstring(inner.call_id.as_str()),
            creator: cstring(inner.creator.as_str()),
            extra: cstring(&inner.extra),
            participants: Participants::new(&inner.participants),
            inner,
        }
    }
}

// SAFETY: `callplus_call_info` pointers always point at an `Info`.
unsafe impl Opaque for callplus_call_info {
    type Rust = Info;
}

/// The call's id.
///
/// # Safety
/// `c` must be NULL or a live `callplus_call_info`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_info_call_id(c: *const callplus_call_info) -> *const c_char {
    // SAFETY: forwarded contract.
    unsafe { with_ref(c, |c| c.call_id.as_ptr()) }
}

/// SINGLE or MULTI.
///
/// # Safety
/// `c` must be NULL or a live `callplus_call_info`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_info_call_type(c: *const callplus_call_info) -> callplus_call_type {
    // SAFETY: forwarded contract.
    unsafe { with_ref(c, |c| c.inner.call_type.into()) }
}

/// AUDIO or AUDIO_VIDEO.
///
/// # Safety
/// `c` must be NULL or a live `callplus_call_info`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_info_media_type(c: *const callplus_call_info) -> callplus_media_type {
    // SAFETY: forwarded contract.
    unsafe { with_ref(c, |c| c.inner.media_type.into()) }
}

/// Who started the call.
///
/// # Safety
/// `c` must be NULL or a live `callplus_call_info`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_info_creator(c: *const callplus_call_info) -> *const c_char {
    // SAFETY: forwarded contract.
    unsafe { with_ref(c, |c| c.creator.as_ptr()) }
}

/// The data the caller attached ("" when none).
///
/// # Safety
/// `c` must be NULL or a live `callplus_call_info`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_info_extra(c: *const callplus_call_info) -> *const c_char {
    // SAFETY: forwarded contract.
    unsafe { with_ref(c, |c| c.extra.as_ptr()) }
}

/// When the call was created (ms since the Unix epoch).
///
/// # Safety
/// `c` must be NULL or a live `callplus_call_info`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_info_created_at_ms(c: *const callplus_call_info) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { with_ref(c, |c| c.inner.created_at_ms) }
}

/// When the first two participants connected; 0 when they never did.
///
/// # Safety
/// `c` must be NULL or a live `callplus_call_info`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_info_started_at_ms(c: *const callplus_call_info) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { with_ref(c, |c| c.inner.started_at_ms.unwrap_or(0)) }
}

/// When the first media frame was reported; 0 when not yet.
///
/// # Safety
/// `c` must be NULL or a live `callplus_call_info`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_info_first_frame_at_ms(c: *const callplus_call_info) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { with_ref(c, |c| c.inner.first_frame_at_ms.unwrap_or(0)) }
}

/// When the call ended; 0 while it lasts.
///
/// # Safety
/// `c` must be NULL or a live `callplus_call_info`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_info_ended_at_ms(c: *const callplus_call_info) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { with_ref(c, |c| c.inner.ended_at_ms.unwrap_or(0)) }
}

/// The call's version: increases on every change.
///
/// # Safety
/// `c` must be NULL or a live `callplus_call_info`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_info_version(c: *const callplus_call_info) -> u64 {
    // SAFETY: forwarded contract.
    unsafe { with_ref(c, |c| c.inner.version) }
}

/// The number of participants (everyone ever invited, the creator first).
///
/// # Safety
/// `c` must be NULL or a live `callplus_call_info`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_info_participant_count(c: *const callplus_call_info) -> usize {
    // SAFETY: forwarded contract.
    unsafe { with_ref(c, |c| c.participants.list.len()) }
}

/// The user id of participant `index`; NULL when out of range.
///
/// # Safety
/// `c` must be NULL or a live `callplus_call_info`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_info_participant_user_id(
    c: *const callplus_call_info,
    index: usize,
) -> *const c_char {
    // SAFETY: forwarded contract.
    unsafe { with_ref(c, |c| c.participants.user_id(index)) }
}

/// The state of participant `index`; NONE when out of range.
///
/// # Safety
/// `c` must be NULL or a live `callplus_call_info`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_info_participant_state(
    c: *const callplus_call_info,
    index: usize,
) -> callplus_participant_state {
    // SAFETY: forwarded contract.
    unsafe { with_ref(c, |c| c.participants.state(index)) }
}

/// Why participant `index` ended; NONE while in the call or when out of range.
///
/// # Safety
/// `c` must be NULL or a live `callplus_call_info`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_info_participant_reason(
    c: *const callplus_call_info,
    index: usize,
) -> callplus_end_reason {
    // SAFETY: forwarded contract.
    unsafe { with_ref(c, |c| c.participants.reason(index)) }
}

/// Whether participant `index` has turned the camera off; false when out of range.
///
/// # Safety
/// `c` must be NULL or a live `callplus_call_info`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_info_participant_camera_disabled(
    c: *const callplus_call_info,
    index: usize,
) -> bool {
    // SAFETY: forwarded contract.
    unsafe { with_ref(c, |c| c.participants.camera_disabled(index)) }
}

/// Whether participant `index` has turned the microphone off; false when out of range.
///
/// # Safety
/// `c` must be NULL or a live `callplus_call_info`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_info_participant_microphone_disabled(
    c: *const callplus_call_info,
    index: usize,
) -> bool {
    // SAFETY: forwarded contract.
    unsafe { with_ref(c, |c| c.participants.microphone_disabled(index)) }
}

/// How far the invitation got to participant `index`, the best over the user's devices;
/// UNREACHABLE when out of range.
///
/// # Safety
/// `c` must be NULL or a live `callplus_call_info`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_info_participant_delivery(
    c: *const callplus_call_info,
    index: usize,
) -> callplus_delivery {
    // SAFETY: forwarded contract.
    unsafe { with_ref(c, |c| c.participants.delivery(index)) }
}

/// Hands an owned call snapshot to C.
pub(crate) fn new_info(call: CallInfo) -> *mut callplus_call_info {
    to_boxed::<callplus_call_info>(Info::new(call))
}

/// Frees a call snapshot from `callplus_client_get_call`. NULL is ignored. Never pass one
/// borrowed from a record or a list.
///
/// # Safety
/// `c` must be NULL or an owned `callplus_call_info` not freed before.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_info_free(c: *mut callplus_call_info) {
    // SAFETY: forwarded contract.
    boundary(|| drop(unsafe { free_boxed(c) }))
}

// ----- callplus_call_info_list ----------------------------------------------------------------

/// A list of calls owned by the caller (from `callplus_client_get_available_calls`). Free it
/// with `callplus_call_info_list_free`.
pub struct callplus_call_info_list {
    _private: [u8; 0],
}

// SAFETY: `callplus_call_info_list` pointers always point at a `Vec<Info>`.
unsafe impl Opaque for callplus_call_info_list {
    type Rust = Vec<Info>;
}

/// Hands a list of calls to C.
pub(crate) fn new_info_list(calls: Vec<CallInfo>) -> *mut callplus_call_info_list {
    to_boxed::<callplus_call_info_list>(calls.into_iter().map(Info::new).collect())
}

/// The number of calls; 0 when `list` is NULL.
///
/// # Safety
/// `list` must be NULL or a live `callplus_call_info_list`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_info_list_len(list: *const callplus_call_info_list) -> usize {
    // SAFETY: forwarded contract.
    unsafe { with_ref(list, Vec::len) }
}

/// The call at `index` (valid until the list is freed); NULL when out of range.
///
/// # Safety
/// `list` must be NULL or a live `callplus_call_info_list`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_info_list_get(
    list: *const callplus_call_info_list,
    index: usize,
) -> *const callplus_call_info {
    // SAFETY: forwarded contract.
    unsafe { with_ref(list, |l| l.get(index).map_or(std::ptr::null(), to_const_ptr::<callplus_call_info>)) }
}

/// Frees a list of calls. NULL is ignored.
///
/// # Safety
/// `list` must be NULL or a `callplus_call_info_list` not freed before.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_info_list_free(list: *mut callplus_call_info_list) {
    // SAFETY: forwarded contract.
    boundary(|| drop(unsafe { free_boxed(list) }))
}

// ----- callplus_call_record -------------------------------------------------------------------

/// A user's log entry of a finished call. Always borrowed: from a `callplus_record_page` or
/// from a `CALLPLUS_EVENT_TYPE_RECEIVED_CALL_RECORD` event.
pub struct callplus_call_record {
    _private: [u8; 0],
}

/// The Rust side of a `callplus_call_record`.
pub(crate) struct Record {
    inner: CallRecord,
    owner: CString,
    inviter: Option<CString>,
    call: Info,
}

impl Record {
    pub(crate) fn new(inner: CallRecord) -> Self {
        Record {
            owner: cstring(inner.owner.as_str()),
            inviter: inner.inviter.as_ref().map(|u| cstring(u.as_str())),
            call: Info::new(CallInfo::clone(&inner.call)),
            inner,
        }
    }

    pub(crate) fn call_id(&self) -> &CString {
        &self.call.call_id
    }
}

// SAFETY: `callplus_call_record` pointers always point at a `Record`.
unsafe impl Opaque for callplus_call_record {
    type Rust = Record;
}

/// A borrowed pointer to a record.
pub(crate) fn record_ptr(record: &Record) -> *const callplus_call_record {
    to_const_ptr::<callplus_call_record>(record)
}

/// The call as it ended (borrowed from the record).
///
/// # Safety
/// `r` must be NULL or a live `callplus_call_record`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_record_call(
    r: *const callplus_call_record,
) -> *const callplus_call_info {
    // SAFETY: forwarded contract.
    unsafe { with_ref(r, |r| to_const_ptr::<callplus_call_info>(&r.call)) }
}

/// The call's id (same as `callplus_call_info_call_id(callplus_call_record_call(r))`).
///
/// # Safety
/// `r` must be NULL or a live `callplus_call_record`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_record_call_id(r: *const callplus_call_record) -> *const c_char {
    // SAFETY: forwarded contract.
    unsafe { with_ref(r, |r| r.call.call_id.as_ptr()) }
}

/// The record's owner.
///
/// # Safety
/// `r` must be NULL or a live `callplus_call_record`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_record_owner(r: *const callplus_call_record) -> *const c_char {
    // SAFETY: forwarded contract.
    unsafe { with_ref(r, |r| r.owner.as_ptr()) }
}

/// Who invited the owner; NULL when the owner created the call.
///
/// # Safety
/// `r` must be NULL or a live `callplus_call_record`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_record_inviter(r: *const callplus_call_record) -> *const c_char {
    // SAFETY: forwarded contract.
    unsafe { with_ref(r, |r| opt_ptr(r.inviter.as_ref())) }
}

/// Why the call ended for the owner.
///
/// # Safety
/// `r` must be NULL or a live `callplus_call_record`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_record_end_reason(
    r: *const callplus_call_record,
) -> callplus_end_reason {
    // SAFETY: forwarded contract.
    unsafe { with_ref(r, |r| r.inner.end_reason.into()) }
}

/// OUTGOING for the creator, INCOMING for the others.
///
/// # Safety
/// `r` must be NULL or a live `callplus_call_record`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_record_direction(
    r: *const callplus_call_record,
) -> callplus_direction {
    // SAFETY: forwarded contract.
    unsafe { with_ref(r, |r| r.inner.direction.into()) }
}

/// Talk time in ms (0 when the call never connected).
///
/// # Safety
/// `r` must be NULL or a live `callplus_call_record`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_record_duration_ms(r: *const callplus_call_record) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { with_ref(r, |r| r.inner.duration_ms) }
}

/// The record's paging key.
///
/// # Safety
/// `r` must be NULL or a live `callplus_call_record`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_record_sync_time(r: *const callplus_call_record) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { with_ref(r, |r| r.inner.sync_time) }
}

// ----- callplus_record_page -------------------------------------------------------------------

/// One page of call records (from `callplus_client_get_call_records`). Free it with
/// `callplus_record_page_free`.
pub struct callplus_record_page {
    _private: [u8; 0],
}

/// The Rust side of a `callplus_record_page`.
pub(crate) struct Page {
    records: Vec<Record>,
    has_more: bool,
    sync_time: i64,
}

// SAFETY: `callplus_record_page` pointers always point at a `Page`.
unsafe impl Opaque for callplus_record_page {
    type Rust = Page;
}

/// Hands a page to C.
pub(crate) fn new_page(page: RecordPage) -> *mut callplus_record_page {
    to_boxed::<callplus_record_page>(Page {
        records: page.records.into_iter().map(Record::new).collect(),
        has_more: page.has_more,
        sync_time: page.sync_time,
    })
}

/// The number of records on the page.
///
/// # Safety
/// `page` must be NULL or a live `callplus_record_page`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_record_page_len(page: *const callplus_record_page) -> usize {
    // SAFETY: forwarded contract.
    unsafe { with_ref(page, |p| p.records.len()) }
}

/// The record at `index` (valid until the page is freed); NULL when out of range.
///
/// # Safety
/// `page` must be NULL or a live `callplus_record_page`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_record_page_get(
    page: *const callplus_record_page,
    index: usize,
) -> *const callplus_call_record {
    // SAFETY: forwarded contract.
    unsafe { with_ref(page, |p| p.records.get(index).map_or(std::ptr::null(), record_ptr)) }
}

/// Whether more records follow: ask again with `callplus_record_page_sync_time`.
///
/// # Safety
/// `page` must be NULL or a live `callplus_record_page`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_record_page_has_more(page: *const callplus_record_page) -> bool {
    // SAFETY: forwarded contract.
    unsafe { with_ref(page, |p| p.has_more) }
}

/// The `sync_time` to pass to get the next page.
///
/// # Safety
/// `page` must be NULL or a live `callplus_record_page`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_record_page_sync_time(page: *const callplus_record_page) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { with_ref(page, |p| p.sync_time) }
}

/// Frees a page. NULL is ignored.
///
/// # Safety
/// `page` must be NULL or a `callplus_record_page` not freed before.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_record_page_free(page: *mut callplus_record_page) {
    // SAFETY: forwarded contract.
    boundary(|| drop(unsafe { free_boxed(page) }))
}

// ----- callplus_call_summary ------------------------------------------------------------------

/// The end-of-call message of a SINGLE call (from a `CALLPLUS_EVENT_TYPE_SUMMARY_MESSAGE`
/// event; borrowed from it).
pub struct callplus_call_summary {
    _private: [u8; 0],
}

/// The Rust side of a `callplus_call_summary`.
pub(crate) struct Summary {
    inner: CallSummary,
    owner: CString,
    call_id: CString,
    caller: CString,
    peer: CString,
}

impl Summary {
    pub(crate) fn new(inner: CallSummary) -> Self {
        Summary {
            owner: cstring(inner.owner.as_str()),
            call_id: cstring(inner.call_id.as_str()),
            caller: cstring(inner.caller.as_str()),
            peer: cstring(inner.peer.as_str()),
            inner,
        }
    }

    pub(crate) fn call_id(&self) -> &CString {
        &self.call_id
    }
}

// SAFETY: `callplus_call_summary` pointers always point at a `Summary`.
unsafe impl Opaque for callplus_call_summary {
    type Rust = Summary;
}

/// A borrowed pointer to a summary.
pub(crate) fn summary_ptr(summary: &Summary) -> *const callplus_call_summary {
    to_const_ptr::<callplus_call_summary>(summary)
}

/// The recipient of the summary.
///
/// # Safety
/// `m` must be NULL or a live `callplus_call_summary`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_summary_owner(m: *const callplus_call_summary) -> *const c_char {
    // SAFETY: forwarded contract.
    unsafe { with_ref(m, |m| m.owner.as_ptr()) }
}

/// The call's id.
///
/// # Safety
/// `m` must be NULL or a live `callplus_call_summary`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_summary_call_id(m: *const callplus_call_summary) -> *const c_char {
    // SAFETY: forwarded contract.
    unsafe { with_ref(m, |m| m.call_id.as_ptr()) }
}

/// Who placed the call.
///
/// # Safety
/// `m` must be NULL or a live `callplus_call_summary`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_summary_caller(m: *const callplus_call_summary) -> *const c_char {
    // SAFETY: forwarded contract.
    unsafe { with_ref(m, |m| m.caller.as_ptr()) }
}

/// The other user.
///
/// # Safety
/// `m` must be NULL or a live `callplus_call_summary`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_summary_peer(m: *const callplus_call_summary) -> *const c_char {
    // SAFETY: forwarded contract.
    unsafe { with_ref(m, |m| m.peer.as_ptr()) }
}

/// The media type at the end.
///
/// # Safety
/// `m` must be NULL or a live `callplus_call_summary`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_summary_media_type(
    m: *const callplus_call_summary,
) -> callplus_media_type {
    // SAFETY: forwarded contract.
    unsafe { with_ref(m, |m| m.inner.media_type.into()) }
}

/// When the call was created.
///
/// # Safety
/// `m` must be NULL or a live `callplus_call_summary`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_summary_created_at_ms(m: *const callplus_call_summary) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { with_ref(m, |m| m.inner.created_at_ms) }
}

/// When the call connected; 0 when it never did.
///
/// # Safety
/// `m` must be NULL or a live `callplus_call_summary`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_summary_started_at_ms(m: *const callplus_call_summary) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { with_ref(m, |m| m.inner.started_at_ms.unwrap_or(0)) }
}

/// When the call ended.
///
/// # Safety
/// `m` must be NULL or a live `callplus_call_summary`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_summary_ended_at_ms(m: *const callplus_call_summary) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { with_ref(m, |m| m.inner.ended_at_ms) }
}

/// Talk time in ms (0 when the call never connected).
///
/// # Safety
/// `m` must be NULL or a live `callplus_call_summary`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_summary_duration_ms(m: *const callplus_call_summary) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { with_ref(m, |m| m.inner.duration_ms) }
}

/// Why the call ended for the recipient.
///
/// # Safety
/// `m` must be NULL or a live `callplus_call_summary`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_summary_end_reason(
    m: *const callplus_call_summary,
) -> callplus_end_reason {
    // SAFETY: forwarded contract.
    unsafe { with_ref(m, |m| m.inner.end_reason.into()) }
}

/// The recipient's direction.
///
/// # Safety
/// `m` must be NULL or a live `callplus_call_summary`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_call_summary_direction(
    m: *const callplus_call_summary,
) -> callplus_direction {
    // SAFETY: forwarded contract.
    unsafe { with_ref(m, |m| m.inner.direction.into()) }
}
