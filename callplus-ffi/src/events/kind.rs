//! What a `callplus_event` is about: the C event types, their names, and the kind of a media
//! event.

use std::ffi::c_char;

use callplus_media::MediaEvent;

use crate::ffi::PanicDefault;

/// What an event is about ([events](docs/protocol.md#events) and the connection's state). The accessors that apply to
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
    /// Built-in media through the SFU: the active speaker changed (the loudest user for a
    /// moment): `call_id`, `user_id` (NULL until someone has spoken or once the speaker left).
    ActiveSpeaker = 27,
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
        27 => c"ACTIVE_SPEAKER",
        _ => c"UNKNOWN",
    };
    name.as_ptr()
}

impl PanicDefault for callplus_event_type {
    fn panic_default() -> Self {
        callplus_event_type::None
    }
}

/// The C kind of a media event; `None` for what the client's media glue handles itself (the
/// adapter's outgoing SDP/ICE), which never reaches the app.
pub(super) fn media_kind(event: &MediaEvent) -> Option<callplus_event_type> {
    use callplus_event_type as K;
    Some(match event {
        MediaEvent::PeerConnected { .. } => K::PeerConnected,
        MediaEvent::UserMediaAvailable { .. } => K::UserMediaAvailable,
        MediaEvent::FirstFrame { .. } => K::FirstFrame,
        MediaEvent::AudioLevel { .. } => K::AudioLevel,
        MediaEvent::Stats(_) => K::MediaStats,
        MediaEvent::FetchRemoteMediaError { .. } => K::FetchRemoteMediaError,
        MediaEvent::ActiveSpeaker { .. } => K::ActiveSpeaker,
        MediaEvent::Error { .. } => K::MediaError,
        _ => return None,
    })
}
