//! The small enums of the domain: call and media types, states, reasons, results.
//!
//! They mirror the protocol enums of `types.proto` without the `UNSPECIFIED` values, so a value
//! of these types is always meaningful; conversion from the wire rejects unspecified or unknown
//! numbers with a typed error.

use callplus_proto::v1 as pb;

use crate::error::{Code, Error};

/// Declares a domain enum with the same variants as a protocol enum (minus UNSPECIFIED), plus
/// the conversions both ways.
macro_rules! mirror_enum {
    ($(#[$doc:meta])* $name:ident => $pb:ident, $code:expr, { $($(#[$vdoc:meta])* $variant:ident),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl From<$name> for pb::$pb {
            fn from(v: $name) -> Self {
                match v { $($name::$variant => pb::$pb::$variant,)+ }
            }
        }

        impl From<$name> for i32 {
            fn from(v: $name) -> Self {
                pb::$pb::from(v) as i32
            }
        }

        impl TryFrom<i32> for $name {
            type Error = Error;
            fn try_from(n: i32) -> Result<Self, Error> {
                match pb::$pb::try_from(n) {
                    $(Ok(pb::$pb::$variant) => Ok($name::$variant),)+
                    _ => Err(Error::new($code, format!(concat!("invalid ", stringify!($name), " value {}"), n))),
                }
            }
        }
    };
}

mirror_enum!(
    /// SINGLE (1:1) or MULTI (group).
    CallType => CallType, Code::ParamError, {
        /// A 1:1 call.
        Single,
        /// A group call.
        Multi,
    }
);

mirror_enum!(
    /// Audio only, or audio and video.
    MediaType => MediaType, Code::MediaTypeInvalid, {
        /// Audio only.
        Audio,
        /// Audio and video.
        AudioVideo,
    }
);

mirror_enum!(
    /// A kind of track: microphone (audio) or camera (video).
    MediaKind => MediaKind, Code::ParamError, {
        /// Microphone.
        Audio,
        /// Camera.
        Video,
    }
);

mirror_enum!(
    /// A participant's state in a call.
    ParticipantState => ParticipantState, Code::ParamError, {
        /// Known but not invited (reserved).
        Idle,
        /// Invited; no device has reported ringing yet.
        Incoming,
        /// A device rings.
        Ringing,
        /// Accepted; media is being set up.
        Connecting,
        /// In the call.
        OnCall,
        /// Left or never joined.
        Ended,
    }
);

impl ParticipantState {
    /// Whether the participant is still being rung (invited, not answered).
    pub fn is_ringing(self) -> bool {
        matches!(self, ParticipantState::Incoming | ParticipantState::Ringing)
    }

    /// Whether the participant has answered and not left.
    pub fn is_connected(self) -> bool {
        matches!(self, ParticipantState::Connecting | ParticipantState::OnCall)
    }

    /// Whether the participant still holds a place in the call.
    pub fn is_active(self) -> bool {
        !matches!(self, ParticipantState::Ended | ParticipantState::Idle)
    }
}

mirror_enum!(
    /// A call's state as seen by one user (the SDK's session state).
    CallState => CallState, Code::ParamError, {
        /// No call.
        Idle,
        /// Outgoing, not answered.
        Dialing,
        /// Incoming, not answered.
        Incoming,
        /// Answered, media being set up.
        Connecting,
        /// In the call.
        OnCall,
        /// Ended for this user.
        Ended,
    }
);

mirror_enum!(
    /// How far an invitation got to a callee device.
    Delivery => Delivery, Code::ParamError, {
        /// No connected device, no push.
        Unreachable,
        /// Only a push was requested.
        Pushed,
        /// A device acked the invitation frame.
        Delivered,
        /// A device shows the call.
        Ringing,
    }
);

mirror_enum!(
    /// Outcome of a change-media-type transaction.
    ChangeMediaTypeResult => ChangeMediaTypeResult, Code::ParamError, {
        /// Agreed (or a downgrade, which needs no agreement).
        Accepted,
        /// Cancelled by the requester.
        Cancelled,
        /// Refused by the peer.
        Rejected,
        /// Not answered in time.
        Timeout,
        /// Both sides asked at once.
        Conflict,
    }
);

mirror_enum!(
    /// Direction of a call from its record owner's point of view.
    Direction => Direction, Code::ParamError, {
        /// Placed by the owner.
        Outgoing,
        /// Received by the owner.
        Incoming,
    }
);

/// Sort order of call record pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RecordOrder {
    /// Newest first.
    #[default]
    Desc,
    /// Oldest first.
    Asc,
}

impl From<RecordOrder> for i32 {
    fn from(v: RecordOrder) -> i32 {
        match v {
            RecordOrder::Desc => pb::RecordOrder::Desc as i32,
            RecordOrder::Asc => pb::RecordOrder::Asc as i32,
        }
    }
}

impl TryFrom<i32> for RecordOrder {
    type Error = Error;
    fn try_from(n: i32) -> Result<Self, Error> {
        match pb::RecordOrder::try_from(n) {
            Ok(pb::RecordOrder::Desc) => Ok(RecordOrder::Desc),
            Ok(pb::RecordOrder::Asc) => Ok(RecordOrder::Asc),
            Err(_) => Err(Error::new(Code::ParamError, format!("invalid record order {n}"))),
        }
    }
}

mirror_enum!(
    /// Why a call ended for a participant, from that participant's point of view. Causes come
    /// in a local form (this user did or suffered it) and a `Remote*` form (the other side did).
    EndReason => EndReason, Code::ParamError, {
        /// This user hung up.
        Hangup,
        /// The other side hung up.
        RemoteHangup,
        /// This user rejected.
        Reject,
        /// The callee rejected.
        RemoteReject,
        /// This user cancelled before an answer.
        Cancel,
        /// The caller cancelled.
        RemoteCancel,
        /// This user did not answer in time.
        NoResponse,
        /// The callee did not answer in time.
        RemoteNoResponse,
        /// This user was busy (auto-reject).
        Busy,
        /// The callee was busy (auto-reject).
        RemoteBusy,
        /// Another device of this user accepted.
        AcceptedOnOtherDevice,
        /// Another device of this user rejected.
        RejectedOnOtherDevice,
        /// This user accepted another call.
        AcceptedAnotherCall,
        /// The other side accepted another call.
        RemoteAcceptedAnotherCall,
        /// This device went silent past the liveness timeout.
        NetworkError,
        /// The other side went silent past the liveness timeout.
        RemoteNetworkError,
        /// This user logged in elsewhere.
        KickedOtherLogin,
        /// The other side logged in elsewhere.
        RemoteKickedOtherLogin,
        /// The server removed this user.
        KickedByServer,
        /// The server removed the other side.
        RemoteKickedByServer,
        /// The server ended the call.
        EndedByServer,
        /// Local media failed.
        MediaError,
        /// The other side's media failed.
        RemoteMediaError,
        /// This user had no reachable device until the timeout.
        Offline,
        /// The callee had no reachable device until the timeout.
        RemoteOffline,
    }
);

impl EndReason {
    /// How the other side of a SINGLE call sees this user's reason: `Hangup` becomes
    /// `RemoteHangup`, and so on. Reasons with no remote form are returned unchanged.
    pub fn to_remote(self) -> EndReason {
        use EndReason::*;
        match self {
            Hangup => RemoteHangup,
            Reject => RemoteReject,
            Cancel => RemoteCancel,
            NoResponse => RemoteNoResponse,
            Busy => RemoteBusy,
            AcceptedAnotherCall => RemoteAcceptedAnotherCall,
            NetworkError => RemoteNetworkError,
            KickedOtherLogin => RemoteKickedOtherLogin,
            KickedByServer => RemoteKickedByServer,
            MediaError => RemoteMediaError,
            Offline => RemoteOffline,
            // A callee whose other device answered or refused ends the call for the caller
            // exactly as if it had been answered or refused from the device that rang.
            AcceptedOnOtherDevice => RemoteHangup,
            RejectedOnOtherDevice => RemoteReject,
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_and_unknown_values_are_rejected() {
        assert_eq!(CallType::try_from(0).map_err(|e| e.code), Err(Code::ParamError));
        assert_eq!(MediaType::try_from(0).map_err(|e| e.code), Err(Code::MediaTypeInvalid));
        assert_eq!(MediaType::try_from(99).map_err(|e| e.code), Err(Code::MediaTypeInvalid));
        assert_eq!(MediaType::try_from(2), Ok(MediaType::AudioVideo));
    }

    #[test]
    fn reasons_have_remote_forms() {
        assert_eq!(EndReason::Hangup.to_remote(), EndReason::RemoteHangup);
        assert_eq!(EndReason::NoResponse.to_remote(), EndReason::RemoteNoResponse);
        assert_eq!(EndReason::EndedByServer.to_remote(), EndReason::EndedByServer);
    }
}
