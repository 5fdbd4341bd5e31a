//! Result codes (SPEC §6) and the error type every fallible operation returns.

use callplus_proto::v1::ResultCode;

/// A result code. The numbers are the protocol's (`ResultCode` in `types.proto`): 80xxx are the
/// CallPlus SDK codes, 81xxx the ones callplus adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Code {
    /// A parameter is missing, malformed or out of range.
    ParamError,
    /// The user already has a current call.
    SessionExist,
    /// The user is not in the call.
    NotInCall,
    /// Bad or disallowed media type.
    MediaTypeInvalid,
    /// Video operation on an audio call.
    NotVideoCall,
    /// The media service is unavailable.
    RtcServiceUnavailable,
    /// Empty, too long or otherwise invalid user list.
    UserListInvalid,
    /// Bad call id.
    CallIdInvalid,
    /// Unknown or finished change-media-type transaction.
    TransactionIdInvalid,
    /// Bad user id.
    UserIdInvalid,
    /// SINGLE call with more than one callee.
    SingleCallNotSupportMultiPerson,
    /// Camera closed.
    CameraClosed,
    /// Microphone closed.
    MicrophoneClosed,
    /// Media source or sink unusable.
    MediaResourceInvalid,
    /// Remote media could not be played.
    PlayMediaFailed,
    /// No video sink for the user.
    VideoViewNotSet,
    /// No connection to the server.
    NotConnected,
    /// Malformed token or bad signature.
    TokenInvalid,
    /// Expired token.
    TokenExpired,
    /// Unknown app key.
    AppUnknown,
    /// The device may not act on this call.
    Forbidden,
    /// No such call (or not visible to the user).
    CallNotFound,
    /// The call is full.
    CallFull,
    /// Too many requests.
    RateLimited,
    /// No answer in time.
    Timeout,
    /// Unexpected failure.
    Internal,
    /// Undecodable frame.
    FrameInvalid,
    /// Frame too large.
    MessageTooLarge,
    /// The call has ended.
    CallEnded,
    /// Not valid in the current state.
    InvalidState,
    /// Resume not possible.
    ResumeRejected,
}

impl Code {
    /// The wire enum of this code.
    pub fn to_proto(self) -> ResultCode {
        match self {
            Code::ParamError => ResultCode::ParamError,
            Code::SessionExist => ResultCode::SessionExist,
            Code::NotInCall => ResultCode::NotInCall,
            Code::MediaTypeInvalid => ResultCode::MediatypeInvalid,
            Code::NotVideoCall => ResultCode::NotVideoCall,
            Code::RtcServiceUnavailable => ResultCode::RtcServiceUnavailable,
            Code::UserListInvalid => ResultCode::UserListInvalid,
            Code::CallIdInvalid => ResultCode::CallIdInvalid,
            Code::TransactionIdInvalid => ResultCode::TransactionIdInvalid,
            Code::UserIdInvalid => ResultCode::UserIdInvalid,
            Code::SingleCallNotSupportMultiPerson => ResultCode::SingleCallNotSupportMultiPerson,
            Code::CameraClosed => ResultCode::CameraClosed,
            Code::MicrophoneClosed => ResultCode::MicrophoneClosed,
            Code::MediaResourceInvalid => ResultCode::MediaResourceInvalid,
            Code::PlayMediaFailed => ResultCode::PlayMediaFailed,
            Code::VideoViewNotSet => ResultCode::VideoViewNotSet,
            Code::NotConnected => ResultCode::NotConnected,
            Code::TokenInvalid => ResultCode::TokenInvalid,
            Code::TokenExpired => ResultCode::TokenExpired,
            Code::AppUnknown => ResultCode::AppUnknown,
            Code::Forbidden => ResultCode::Forbidden,
            Code::CallNotFound => ResultCode::CallNotFound,
            Code::CallFull => ResultCode::CallFull,
            Code::RateLimited => ResultCode::RateLimited,
            Code::Timeout => ResultCode::Timeout,
            Code::Internal => ResultCode::Internal,
            Code::FrameInvalid => ResultCode::FrameInvalid,
            Code::MessageTooLarge => ResultCode::MessageTooLarge,
            Code::CallEnded => ResultCode::CallEnded,
            Code::InvalidState => ResultCode::InvalidState,
            Code::ResumeRejected => ResultCode::ResumeRejected,
        }
    }

    /// The domain code of a wire code; `None` for SUCCESS.
    pub fn from_proto(code: ResultCode) -> Option<Code> {
        Some(match code {
            ResultCode::Success => return None,
            ResultCode::ParamError => Code::ParamError,
            ResultCode::SessionExist => Code::SessionExist,
            ResultCode::NotInCall => Code::NotInCall,
            ResultCode::MediatypeInvalid => Code::MediaTypeInvalid,
            ResultCode::NotVideoCall => Code::NotVideoCall,
            ResultCode::RtcServiceUnavailable => Code::RtcServiceUnavailable,
            ResultCode::UserListInvalid => Code::UserListInvalid,
            ResultCode::CallIdInvalid => Code::CallIdInvalid,
            ResultCode::TransactionIdInvalid => Code::TransactionIdInvalid,
            ResultCode::UserIdInvalid => Code::UserIdInvalid,
            ResultCode::SingleCallNotSupportMultiPerson => Code::SingleCallNotSupportMultiPerson,
            ResultCode::CameraClosed => Code::CameraClosed,
            ResultCode::MicrophoneClosed => Code::MicrophoneClosed,
            ResultCode::MediaResourceInvalid => Code::MediaResourceInvalid,
            ResultCode::PlayMediaFailed => Code::PlayMediaFailed,
            ResultCode::VideoViewNotSet => Code::VideoViewNotSet,
            ResultCode::NotConnected => Code::NotConnected,
            ResultCode::TokenInvalid => Code::TokenInvalid,
            ResultCode::TokenExpired => Code::TokenExpired,
            ResultCode::AppUnknown => Code::AppUnknown,
            ResultCode::Forbidden => Code::Forbidden,
            ResultCode::CallNotFound => Code::CallNotFound,
            ResultCode::CallFull => Code::CallFull,
            ResultCode::RateLimited => Code::RateLimited,
            ResultCode::Timeout => Code::Timeout,
            ResultCode::Internal => Code::Internal,
            ResultCode::FrameInvalid => Code::FrameInvalid,
            ResultCode::MessageTooLarge => Code::MessageTooLarge,
            ResultCode::CallEnded => Code::CallEnded,
            ResultCode::InvalidState => Code::InvalidState,
            ResultCode::ResumeRejected => Code::ResumeRejected,
        })
    }

    /// The numeric code (80001, 81006, …).
    pub fn number(self) -> i32 {
        self.to_proto() as i32
    }

    /// The domain code of a number; unknown numbers become `Internal`.
    pub fn from_number(n: i32) -> Option<Code> {
        match ResultCode::try_from(n) {
            Ok(code) => Code::from_proto(code),
            Err(_) => Some(Code::Internal),
        }
    }

    /// A short English description of the code.
    pub fn describe(self) -> &'static str {
        match self {
            Code::ParamError => "invalid parameter",
            Code::SessionExist => "a call is already in progress",
            Code::NotInCall => "not in this call",
            Code::MediaTypeInvalid => "invalid media type",
            Code::NotVideoCall => "not a video call",
            Code::RtcServiceUnavailable => "media service unavailable",
            Code::UserListInvalid => "invalid user list",
            Code::CallIdInvalid => "invalid call id",
            Code::TransactionIdInvalid => "invalid transaction id",
            Code::UserIdInvalid => "invalid user id",
            Code::SingleCallNotSupportMultiPerson => "a single call cannot have several callees",
            Code::CameraClosed => "camera is closed",
            Code::MicrophoneClosed => "microphone is closed",
            Code::MediaResourceInvalid => "media resource invalid",
            Code::PlayMediaFailed => "playing media failed",
            Code::VideoViewNotSet => "no video view set",
            Code::NotConnected => "not connected",
            Code::TokenInvalid => "invalid token",
            Code::TokenExpired => "token expired",
            Code::AppUnknown => "unknown app key",
            Code::Forbidden => "not allowed on this call",
            Code::CallNotFound => "call not found",
            Code::CallFull => "call is full",
            Code::RateLimited => "rate limited",
            Code::Timeout => "timed out",
            Code::Internal => "internal error",
            Code::FrameInvalid => "malformed frame",
            Code::MessageTooLarge => "message too large",
            Code::CallEnded => "call has ended",
            Code::InvalidState => "not valid in the current state",
            Code::ResumeRejected => "session cannot be resumed",
        }
    }
}

/// An error with its protocol code and a message for humans.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (code {})", code.number())]
pub struct Error {
    /// The protocol code.
    pub code: Code,
    /// What went wrong, in words.
    pub message: String,
}

impl Error {
    /// An error with a message.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Error { code, message: message.into() }
    }

    /// An error whose message is the code's description.
    pub fn from_code(code: Code) -> Self {
        Error { code, message: code.describe().to_owned() }
    }
}

impl From<Code> for Error {
    fn from(code: Code) -> Self {
        Error::from_code(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_numbers_are_kept() {
        assert_eq!(Code::ParamError.number(), 80001);
        assert_eq!(Code::SessionExist.number(), 80002);
        assert_eq!(Code::SingleCallNotSupportMultiPerson.number(), 80011);
        assert_eq!(Code::VideoViewNotSet.number(), 80105);
        assert_eq!(Code::from_number(80007), Some(Code::UserListInvalid));
        assert_eq!(Code::from_number(0), None);
        assert_eq!(Code::from_number(12345), Some(Code::Internal));
    }
}
