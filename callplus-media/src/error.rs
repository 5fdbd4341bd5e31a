//! The error type of the media adapter.

use callplus_session::{CallId, Code, DeviceId, UserId};

/// What can go wrong in the media adapter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// The call has more participants than a full mesh allows for its media type. Larger
    /// calls need an SFU backend (planned).
    #[error("a mesh call of {participants} participants exceeds the limit of {max} for this media type")]
    MeshTooLarge {
        /// Participants including the local user.
        participants: usize,
        /// The configured limit.
        max: usize,
    },
    /// `start` for a call whose media already runs.
    #[error("media for call {0} is already started")]
    CallExists(CallId),
    /// No media runs for this call.
    #[error("no media for call {0}")]
    UnknownCall(CallId),
    /// The call has no such peer.
    #[error("call {call_id} has no peer {user}/{device}")]
    UnknownPeer {
        /// The call.
        call_id: CallId,
        /// The peer's user.
        user: UserId,
        /// The peer's device.
        device: DeviceId,
    },
    /// A peer is the local user itself (its own audio would loop back) or is listed twice.
    #[error("invalid peer {0}: {1}")]
    InvalidPeer(UserId, &'static str),
    /// An SDP or ICE message that cannot be applied.
    #[error("invalid signal from {user}/{device}: {reason}")]
    InvalidSignal {
        /// Sender user.
        user: UserId,
        /// Sender device.
        device: DeviceId,
        /// Why it was refused.
        reason: String,
    },
    /// The WebRTC stack failed.
    #[error("webrtc: {0}")]
    WebRtc(String),
    /// An encoder or decoder failed.
    #[error("codec: {0}")]
    Codec(String),
    /// A bad configuration value.
    #[error("invalid config: {0}")]
    Config(String),
    /// File or socket I/O.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl MediaError {
    /// The SDK result code (docs/protocol.md#result-codes) that best describes this error.
    pub fn code(&self) -> Code {
        match self {
            MediaError::MeshTooLarge { .. } => Code::CallFull,
            MediaError::CallExists(_) => Code::SessionExist,
            MediaError::UnknownCall(_) => Code::NotInCall,
            MediaError::UnknownPeer { .. } | MediaError::InvalidPeer(..) => Code::UserIdInvalid,
            MediaError::InvalidSignal { .. } | MediaError::Config(_) => Code::ParamError,
            MediaError::WebRtc(_) => Code::RtcServiceUnavailable,
            MediaError::Codec(_) | MediaError::Io(_) => Code::MediaResourceInvalid,
        }
    }
}

impl From<webrtc::error::Error> for MediaError {
    fn from(e: webrtc::error::Error) -> Self {
        MediaError::WebRtc(e.to_string())
    }
}
