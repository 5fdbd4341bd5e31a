//! What can go wrong in the SFU, and the SDK result code each failure maps to.

use callplus_session::{CallId, Code, DeviceId, UserId};

use crate::token::TokenError;

/// A refused signal or a failed operation of the SFU.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SfuError {
    /// The offer carried no media token, or one not issued for this (call, user, device), or an
    /// expired one: the SFU does not answer, so the device never learns its ICE credentials.
    #[error("media token refused for {user}/{device} in call {call_id}: {reason}")]
    Unauthorized {
        /// The call.
        call_id: CallId,
        /// Who sent the offer.
        user: UserId,
        /// From which device.
        device: DeviceId,
        /// Why.
        reason: TokenError,
    },
    /// An answer or candidate from a device that has no connection to the SFU.
    #[error("{user}/{device} has no media connection in call {call_id}")]
    UnknownParticipant {
        /// The call.
        call_id: CallId,
        /// The user.
        user: UserId,
        /// The device.
        device: DeviceId,
    },
    /// A malformed SDP or candidate, or one the stack refused.
    #[error("invalid signal from {user}/{device}: {reason}")]
    InvalidSignal {
        /// The user.
        user: UserId,
        /// The device.
        device: DeviceId,
        /// What was wrong.
        reason: String,
    },
    /// The WebRTC stack failed.
    #[error("webrtc: {0}")]
    WebRtc(String),
    /// The SFU task is gone (the [`crate::Sfu`] is shutting down).
    #[error("the SFU stopped")]
    Stopped,
}

impl SfuError {
    /// The SDK result code for this error.
    pub fn code(&self) -> Code {
        match self {
            SfuError::Unauthorized { reason: TokenError::Expired, .. } => Code::TokenExpired,
            SfuError::Unauthorized { .. } => Code::TokenInvalid,
            SfuError::UnknownParticipant { .. } => Code::NotInCall,
            SfuError::InvalidSignal { .. } => Code::ParamError,
            SfuError::WebRtc(_) | SfuError::Stopped => Code::RtcServiceUnavailable,
        }
    }
}

impl From<webrtc::error::Error> for SfuError {
    fn from(e: webrtc::error::Error) -> Self {
        SfuError::WebRtc(e.to_string())
    }
}
