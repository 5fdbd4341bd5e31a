//! The C enums of the domain. Their numbers are the protocol's (`types.proto`), with 0 meaning
//! "none" / "not applicable" where the protocol has an UNSPECIFIED value.
//!
//! Functions take these as plain integers (`uint32_t`): C may pass any number, and an unknown
//! one is refused with a code instead of becoming an invalid Rust enum.

use std::ffi::c_char;

use callplus_session::client::ConnectionState;
use callplus_session::{
    CallState, CallType, ChangeMediaTypeResult, Delivery, Direction, EndReason, MediaKind, MediaType,
    ParticipantState, RecordOrder,
};

use crate::ffi::PanicDefault;
use crate::result::callplus_result;

/// `From<Domain>` for a C enum whose variants carry the same names as the domain's.
macro_rules! from_domain {
    ($domain:ident => $c:ident { $($v:ident),+ $(,)? }) => {
        impl From<$domain> for $c {
            fn from(v: $domain) -> Self {
                match v {
                    $($domain::$v => $c::$v,)+
                }
            }
        }
    };
}

/// A parser of a C number into the domain value of the same-named C enum variant; any other
/// number is refused with `$refusal`.
macro_rules! domain_arg {
    ($(#[$doc:meta])* $name:ident: $c:ident => $domain:ident { $($v:ident),+ $(,)? } else $refusal:ident) => {
        $(#[$doc])*
        pub(crate) fn $name(n: u32) -> Result<$domain, callplus_result> {
            $(if n == $c::$v as u32 {
                return Ok($domain::$v);
            })+
            Err(callplus_result::$refusal)
        }
    };
}

/// NULL objects and caught panics read as the enum's "none" value.
macro_rules! fallback {
    ($($ty:ident => $v:ident),+ $(,)?) => {
        $(impl PanicDefault for $ty {
            fn panic_default() -> Self {
                $ty::$v
            }
        })+
    };
}

fallback!(
    callplus_call_type => None,
    callplus_media_type => None,
    callplus_media_kind => None,
    callplus_call_state => None,
    callplus_participant_state => None,
    callplus_end_reason => None,
    callplus_change_media_type_result => None,
    callplus_direction => None,
    callplus_delivery => Unreachable,
    callplus_connection_state => None,
);

/// SINGLE (1:1) or MULTI (group) call.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum callplus_call_type {
    /// Not applicable.
    None = 0,
    /// A 1:1 call.
    Single = 1,
    /// A group call.
    Multi = 2,
}

from_domain!(CallType => callplus_call_type { Single, Multi });

domain_arg!(
    /// The domain call type of a C number.
    call_type_arg: callplus_call_type => CallType { Single, Multi } else ParamError
);

/// Audio only, or audio and video.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum callplus_media_type {
    /// Not applicable.
    None = 0,
    /// Audio only.
    Audio = 1,
    /// Audio and video.
    AudioVideo = 2,
}

from_domain!(MediaType => callplus_media_type { Audio, AudioVideo });

domain_arg!(
    /// The domain media type of a C number.
    media_type_arg: callplus_media_type => MediaType { Audio, AudioVideo } else MediatypeInvalid
);

/// A kind of track: a microphone's audio or a camera's video.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum callplus_media_kind {
    /// Not applicable.
    None = 0,
    /// Audio (Opus).
    Audio = 1,
    /// Video (VP8).
    Video = 2,
}

from_domain!(MediaKind => callplus_media_kind { Audio, Video });

/// A call's state as this user sees it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum callplus_call_state {
    /// Not applicable.
    None = 0,
    /// No call.
    Idle = 1,
    /// Outgoing, not answered.
    Dialing = 2,
    /// Incoming, not answered.
    Incoming = 3,
    /// Answered, media being set up.
    Connecting = 4,
    /// In the call.
    OnCall = 5,
    /// Ended for this user.
    Ended = 6,
}

from_domain!(CallState => callplus_call_state { Idle, Dialing, Incoming, Connecting, OnCall, Ended });

/// A participant's state in a call.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum callplus_participant_state {
    /// Not applicable.
    None = 0,
    /// Known but not invited (reserved).
    Idle = 1,
    /// Invited; no device has reported ringing yet.
    Incoming = 2,
    /// A device rings ("the remote is ringing").
    Ringing = 3,
    /// Accepted; media is being set up.
    Connecting = 4,
    /// In the call.
    OnCall = 5,
    /// Left or never joined.
    Ended = 6,
}

from_domain!(ParticipantState => callplus_participant_state { Idle, Incoming, Ringing, Connecting, OnCall, Ended });

/// Why a call ended for a user, from that user's point of view (`REMOTE_*`: the other side did
/// it).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum callplus_end_reason {
    /// Not applicable.
    None = 0,
    /// This user hung up.
    Hangup = 1,
    /// The other side hung up.
    RemoteHangup = 2,
    /// This user rejected.
    Reject = 3,
    /// The callee rejected.
    RemoteReject = 4,
    /// This user cancelled before an answer.
    Cancel = 5,
    /// The caller cancelled.
    RemoteCancel = 6,
    /// This user did not answer in time.
    NoResponse = 7,
    /// The callee did not answer in time.
    RemoteNoResponse = 8,
    /// This user was busy (auto-reject).
    Busy = 9,
    /// The callee was busy (auto-reject).
    RemoteBusy = 10,
    /// Another device of this user accepted.
    AcceptedOnOtherDevice = 11,
    /// Another device of this user rejected.
    RejectedOnOtherDevice = 12,
    /// This user accepted another call.
    AcceptedAnotherCall = 13,
    /// The other side accepted another call.
    RemoteAcceptedAnotherCall = 14,
    /// This device went silent past the liveness timeout.
    NetworkError = 15,
    /// The other side went silent past the liveness timeout.
    RemoteNetworkError = 16,
    /// This user logged in elsewhere.
    KickedOtherLogin = 17,
    /// The other side logged in elsewhere.
    RemoteKickedOtherLogin = 18,
    /// The server removed this user.
    KickedByServer = 19,
    /// The server removed the other side.
    RemoteKickedByServer = 20,
    /// The server ended the call.
    EndedByServer = 21,
    /// Local media failed.
    MediaError = 22,
    /// The other side's media failed.
    RemoteMediaError = 23,
    /// This user had no reachable device until the timeout.
    Offline = 24,
    /// The callee had no reachable device until the timeout.
    RemoteOffline = 25,
}

impl From<EndReason> for callplus_end_reason {
    fn from(v: EndReason) -> Self {
        use callplus_end_reason as C;
        match v {
            EndReason::Hangup => C::Hangup,
            EndReason::RemoteHangup => C::RemoteHangup,
            EndReason::Reject => C::Reject,
            EndReason::RemoteReject => C::RemoteReject,
            EndReason::Cancel => C::Cancel,
            EndReason::RemoteCancel => C::RemoteCancel,
            EndReason::NoResponse => C::NoResponse,
            EndReason::RemoteNoResponse => C::RemoteNoResponse,
            EndReason::Busy => C::Busy,
            EndReason::RemoteBusy => C::RemoteBusy,
            EndReason::AcceptedOnOtherDevice => C::AcceptedOnOtherDevice,
            EndReason::RejectedOnOtherDevice => C::RejectedOnOtherDevice,
            EndReason::AcceptedAnotherCall => C::AcceptedAnotherCall,
            EndReason::RemoteAcceptedAnotherCall => C::RemoteAcceptedAnotherCall,
            EndReason::NetworkError => C::NetworkError,
            EndReason::RemoteNetworkError => C::RemoteNetworkError,
            EndReason::KickedOtherLogin => C::KickedOtherLogin,
            EndReason::RemoteKickedOtherLogin => C::RemoteKickedOtherLogin,
            EndReason::KickedByServer => C::KickedByServer,
            EndReason::RemoteKickedByServer => C::RemoteKickedByServer,
            EndReason::EndedByServer => C::EndedByServer,
            EndReason::MediaError => C::MediaError,
            EndReason::RemoteMediaError => C::RemoteMediaError,
            EndReason::Offline => C::Offline,
            EndReason::RemoteOffline => C::RemoteOffline,
        }
    }
}

/// The C reason of an optional domain reason.
pub(crate) fn end_reason(v: Option<EndReason>) -> callplus_end_reason {
    v.map_or(callplus_end_reason::None, Into::into)
}

/// Outcome of a change-media-type transaction.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum callplus_change_media_type_result {
    /// Not applicable.
    None = 0,
    /// Agreed (or a downgrade, which needs no agreement).
    Accepted = 1,
    /// Cancelled by the requester.
    Cancelled = 2,
    /// Refused by the peer.
    Rejected = 3,
    /// Not answered in time.
    Timeout = 4,
    /// Both sides asked at once.
    Conflict = 5,
}

impl From<ChangeMediaTypeResult> for callplus_change_media_type_result {
    fn from(v: ChangeMediaTypeResult) -> Self {
        use callplus_change_media_type_result as C;
        match v {
            ChangeMediaTypeResult::Accepted => C::Accepted,
            ChangeMediaTypeResult::Cancelled => C::Cancelled,
            ChangeMediaTypeResult::Rejected => C::Rejected,
            ChangeMediaTypeResult::Timeout => C::Timeout,
            ChangeMediaTypeResult::Conflict => C::Conflict,
        }
    }
}

/// Direction of a call from a record's owner's point of view.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum callplus_direction {
    /// Not applicable.
    None = 0,
    /// Placed by the owner.
    Outgoing = 1,
    /// Received by the owner.
    Incoming = 2,
}

from_domain!(Direction => callplus_direction { Outgoing, Incoming });

/// How far an invitation got to a callee (the best over the callee's devices).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum callplus_delivery {
    /// No connected device and no push (also the value for events without a delivery).
    Unreachable = 0,
    /// Only a push was requested.
    Pushed = 1,
    /// A device received the invitation.
    Delivered = 2,
    /// A device shows the call.
    Ringing = 3,
}

from_domain!(Delivery => callplus_delivery { Unreachable, Pushed, Delivered, Ringing });

/// Sort order of call record pages (`callplus_client_get_call_records`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum callplus_record_order {
    /// Newest first.
    Desc = 0,
    /// Oldest first.
    Asc = 1,
}

domain_arg!(
    /// The domain record order of a C number.
    record_order_arg: callplus_record_order => RecordOrder { Desc, Asc } else ParamError
);

/// The state of a client's connection.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum callplus_connection_state {
    /// Not applicable (an event that is not about the connection).
    None = 0,
    /// Never connected.
    Idle = 1,
    /// Connecting; no session yet.
    Connecting = 2,
    /// Connected: requests are sent at once.
    Connected = 3,
    /// The connection broke; the client reconnects and resumes the session by itself.
    /// Requests made now are sent after the resume.
    Reconnecting = 4,
    /// Disconnected by the app, or the server refused the token for good. The client does not
    /// reconnect.
    Disconnected = 5,
    /// The server closed the session (another login, an operator, a shutdown); the reason is
    /// the event's `callplus_event_reason`. The client does not reconnect.
    Kicked = 6,
}

impl From<ConnectionState> for callplus_connection_state {
    fn from(v: ConnectionState) -> Self {
        match v {
            ConnectionState::Idle => callplus_connection_state::Idle,
            ConnectionState::Connecting => callplus_connection_state::Connecting,
            ConnectionState::Connected => callplus_connection_state::Connected,
            ConnectionState::Reconnecting => callplus_connection_state::Reconnecting,
            ConnectionState::Disconnected => callplus_connection_state::Disconnected,
            ConnectionState::Kicked(_) => callplus_connection_state::Kicked,
        }
    }
}

/// The constant's name without prefix (e.g. "REMOTE_HANGUP") of an end reason number, for
/// logs; "UNKNOWN" for other numbers. Static; never free it.
#[unsafe(no_mangle)]
pub extern "C" fn callplus_end_reason_name(reason: u32) -> *const c_char {
    let name =
        i32::try_from(reason).ok().and_then(|n| EndReason::try_from(n).ok()).map_or(
            c"UNKNOWN",
            |r| match r {
                EndReason::Hangup => c"HANGUP",
                EndReason::RemoteHangup => c"REMOTE_HANGUP",
                EndReason::Reject => c"REJECT",
                EndReason::RemoteReject => c"REMOTE_REJECT",
                EndReason::Cancel => c"CANCEL",
                EndReason::RemoteCancel => c"REMOTE_CANCEL",
                EndReason::NoResponse => c"NO_RESPONSE",
                EndReason::RemoteNoResponse => c"REMOTE_NO_RESPONSE",
                EndReason::Busy => c"BUSY",
                EndReason::RemoteBusy => c"REMOTE_BUSY",
                EndReason::AcceptedOnOtherDevice => c"ACCEPTED_ON_OTHER_DEVICE",
                EndReason::RejectedOnOtherDevice => c"REJECTED_ON_OTHER_DEVICE",
                EndReason::AcceptedAnotherCall => c"ACCEPTED_ANOTHER_CALL",
                EndReason::RemoteAcceptedAnotherCall => c"REMOTE_ACCEPTED_ANOTHER_CALL",
                EndReason::NetworkError => c"NETWORK_ERROR",
                EndReason::RemoteNetworkError => c"REMOTE_NETWORK_ERROR",
                EndReason::KickedOtherLogin => c"KICKED_OTHER_LOGIN",
                EndReason::RemoteKickedOtherLogin => c"REMOTE_KICKED_OTHER_LOGIN",
                EndReason::KickedByServer => c"KICKED_BY_SERVER",
                EndReason::RemoteKickedByServer => c"REMOTE_KICKED_BY_SERVER",
                EndReason::EndedByServer => c"ENDED_BY_SERVER",
                EndReason::MediaError => c"MEDIA_ERROR",
                EndReason::RemoteMediaError => c"REMOTE_MEDIA_ERROR",
                EndReason::Offline => c"OFFLINE",
                EndReason::RemoteOffline => c"REMOTE_OFFLINE",
            },
        );
    name.as_ptr()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_the_protocol() {
        for t in [CallType::Single, CallType::Multi] {
            assert_eq!(callplus_call_type::from(t) as i32, i32::from(t));
            assert_eq!(call_type_arg(i32::from(t) as u32), Ok(t));
        }
        for m in [MediaType::Audio, MediaType::AudioVideo] {
            assert_eq!(callplus_media_type::from(m) as i32, i32::from(m));
            assert_eq!(media_type_arg(i32::from(m) as u32), Ok(m));
        }
        for n in 1..=25 {
            let r = EndReason::try_from(n).expect("a reason");
            assert_eq!(callplus_end_reason::from(r) as i32, n);
        }
        for n in 1..=6 {
            let s = ParticipantState::try_from(n).expect("a state");
            assert_eq!(callplus_participant_state::from(s) as i32, n);
            let s = CallState::try_from(n).expect("a state");
            assert_eq!(callplus_call_state::from(s) as i32, n);
        }
        for n in 1..=5 {
            let r = ChangeMediaTypeResult::try_from(n).expect("a result");
            assert_eq!(callplus_change_media_type_result::from(r) as i32, n);
        }
        for n in 0..=3 {
            let d = Delivery::try_from(n).expect("a delivery");
            assert_eq!(callplus_delivery::from(d) as i32, n);
        }
        for k in [MediaKind::Audio, MediaKind::Video] {
            assert_eq!(callplus_media_kind::from(k) as i32, i32::from(k));
        }
        for o in [RecordOrder::Desc, RecordOrder::Asc] {
            assert_eq!(record_order_arg(i32::from(o) as u32), Ok(o));
        }
    }

    #[test]
    fn unknown_numbers_are_refused() {
        assert_eq!(call_type_arg(0), Err(callplus_result::ParamError));
        assert_eq!(call_type_arg(u32::MAX), Err(callplus_result::ParamError));
        assert_eq!(media_type_arg(3), Err(callplus_result::MediatypeInvalid));
        assert_eq!(record_order_arg(2), Err(callplus_result::ParamError));
    }

    #[test]
    fn reason_names() {
        let name = |n| {
            // SAFETY: the function returns a static C string.
            unsafe { std::ffi::CStr::from_ptr(callplus_end_reason_name(n)) }
        };
        assert_eq!(name(2), c"REMOTE_HANGUP");
        assert_eq!(name(25), c"REMOTE_OFFLINE");
        assert_eq!(name(0), c"UNKNOWN");
        assert_eq!(name(u32::MAX), c"UNKNOWN");
        for n in 1..=25 {
            let r = EndReason::try_from(n as i32).expect("a reason");
            let expected = format!("{r:?}");
            let got = name(n).to_str().expect("ASCII").replace('_', "").to_lowercase();
            assert_eq!(got, expected.to_lowercase());
        }
    }
}
