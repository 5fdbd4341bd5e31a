//! Result codes (docs/protocol.md#result-codes) and the error type every fallible operation
//! returns.

use std::ffi::CStr;

use callplus_proto::v1::ResultCode;

/// The one table of result codes: each row is the domain variant, the wire variant of
/// `ResultCode` (whose numbers, in `types.proto`, are the protocol's: 80xxx are the CallPlus SDK
/// codes, 81xxx the ones callplus adds) and the English message. `Code`, its wire conversions and
/// its messages are generated from it; the C API's `callplus_result` takes the numbers and
/// messages from `Code` (and its tests check the C enum against [`Code::ALL`]), so a code is
/// added in one place. The wire variant names are also the C names (`CALLPLUS_RESULT_…`).
macro_rules! result_codes {
    ($($(#[$doc:meta])* $code:ident => $wire:ident, $message:literal;)*) => {
        /// A result code. The numbers are the protocol's (`ResultCode` in `types.proto`): 80xxx
        /// are the CallPlus SDK codes, 81xxx the ones callplus adds.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Code {
            $($(#[$doc])* $code,)*
        }

        impl Code {
            /// Every code, in protocol order.
            pub const ALL: &'static [Code] = &[$(Code::$code),*];

            /// The wire enum of this code.
            pub fn to_proto(self) -> ResultCode {
                match self {
                    $(Code::$code => ResultCode::$wire,)*
                }
            }

            /// The domain code of a wire code; `None` for SUCCESS.
            ///
            /// The match is exhaustive over the wire enum, so a code added to `types.proto`
            /// without a row in the table does not compile.
            pub fn from_proto(code: ResultCode) -> Option<Code> {
                match code {
                    ResultCode::Success => None,
                    $(ResultCode::$wire => Some(Code::$code),)*
                }
            }

            /// A short English description of the code.
            pub fn describe(self) -> &'static str {
                match self {
                    $(Code::$code => $message,)*
                }
            }

            /// [`Code::describe`] as a NUL-terminated C string (for the C API).
            pub fn describe_c(self) -> &'static CStr {
                match self {
                    $(Code::$code => const {
                        match CStr::from_bytes_with_nul(concat!($message, "\0").as_bytes()) {
                            Ok(s) => s,
                            Err(_) => panic!("a result-code message holds a NUL byte"),
                        }
                    },)*
                }
            }
        }
    };
}

result_codes! {
    /// A parameter is missing, malformed or out of range.
    ParamError => ParamError, "invalid parameter";
    /// The user already has a current call.
    SessionExist => SessionExist, "a call is already in progress";
    /// The user is not in the call.
    NotInCall => NotInCall, "not in this call";
    /// Bad or disallowed media type.
    MediaTypeInvalid => MediatypeInvalid, "invalid media type";
    /// Video operation on an audio call.
    NotVideoCall => NotVideoCall, "not a video call";
    /// The media service is unavailable.
    RtcServiceUnavailable => RtcServiceUnavailable, "media service unavailable";
    /// Empty, too long or otherwise invalid user list.
    UserListInvalid => UserListInvalid, "invalid user list";
    /// Bad call id.
    CallIdInvalid => CallIdInvalid, "invalid call id";
    /// Unknown or finished change-media-type transaction.
    TransactionIdInvalid => TransactionIdInvalid, "invalid transaction id";
    /// Bad user id.
    UserIdInvalid => UserIdInvalid, "invalid user id";
    /// SINGLE call with more than one callee.
    SingleCallNotSupportMultiPerson => SingleCallNotSupportMultiPerson, "a single call cannot have several callees";
    /// Camera closed.
    CameraClosed => CameraClosed, "camera is closed";
    /// Microphone closed.
    MicrophoneClosed => MicrophoneClosed, "microphone is closed";
    /// Media source or sink unusable.
    MediaResourceInvalid => MediaResourceInvalid, "media resource invalid";
    /// Remote media could not be played.
    PlayMediaFailed => PlayMediaFailed, "playing media failed";
    /// No video sink for the user.
    VideoViewNotSet => VideoViewNotSet, "no video view set";
    /// No connection to the server.
    NotConnected => NotConnected, "not connected";
    /// Malformed token or bad signature.
    TokenInvalid => TokenInvalid, "invalid token";
    /// Expired token.
    TokenExpired => TokenExpired, "token expired";
    /// Unknown app key.
    AppUnknown => AppUnknown, "unknown app key";
    /// The device may not act on this call.
    Forbidden => Forbidden, "not allowed on this call";
    /// No such call (or not visible to the user).
    CallNotFound => CallNotFound, "call not found";
    /// The call is full.
    CallFull => CallFull, "call is full";
    /// Too many requests.
    RateLimited => RateLimited, "rate limited";
    /// No answer in time.
    Timeout => Timeout, "timed out";
    /// Unexpected failure.
    Internal => Internal, "internal error";
    /// Undecodable frame.
    FrameInvalid => FrameInvalid, "malformed frame";
    /// Frame too large.
    MessageTooLarge => MessageTooLarge, "message too large";
    /// The call has ended.
    CallEnded => CallEnded, "call has ended";
    /// Not valid in the current state.
    InvalidState => InvalidState, "not valid in the current state";
    /// Resume not possible.
    ResumeRejected => ResumeRejected, "session cannot be resumed";
    /// The user already has as many devices connected as the server allows.
    TooManyDevices => TooManyDevices, "too many devices connected for this user";
}

impl Code {
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

    /// The protocol name of the code without its prefix (`PARAM_ERROR`, `CALL_NOT_FOUND`):
    /// the name docs use and the C constant's suffix (`CALLPLUS_RESULT_PARAM_ERROR`).
    pub fn name(self) -> &'static str {
        let full = self.to_proto().as_str_name();
        full.strip_prefix("RESULT_CODE_").unwrap_or(full)
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

/// An error and its sources on one line (`outer: inner: root`). Transport and database errors
/// (gRPC, TLS, PostgreSQL) keep the useful part, such as "invalid peer certificate", in
/// a source, so the drivers log and report the whole chain.
///
/// ```
/// let io = std::io::Error::other("connection refused");
/// assert_eq!(callplus_session::error::error_chain(&io), "connection refused");
/// ```
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
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

    #[test]
    fn an_error_chain_names_every_source_outermost_first() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot connect")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("invalid peer certificate"));
        assert_eq!(super::error_chain(&e), "cannot connect: invalid peer certificate");
    }

    #[test]
    fn every_code_round_trips_through_the_wire_and_has_a_message() {
        let mut messages = std::collections::HashSet::new();
        for &code in Code::ALL {
            assert_eq!(Code::from_proto(code.to_proto()), Some(code));
            assert_eq!(Code::from_number(code.number()), Some(code));
            assert!(!code.describe().is_empty(), "{code:?}");
            assert!(messages.insert(code.describe()), "{code:?} shares its message");
            assert_eq!(code.describe_c().to_str(), Ok(code.describe()));
            assert_eq!(format!("RESULT_CODE_{}", code.name()), code.to_proto().as_str_name());
        }
    }

    #[test]
    fn the_table_matches_the_proto_enum() {
        // Every value of the wire enum (the .proto schema) other than SUCCESS is a row of the
        // table, and the table has no row the wire enum lacks.
        let wire: Vec<ResultCode> = (0..100_000).filter_map(|n| ResultCode::try_from(n).ok()).collect();
        assert_eq!(wire.first(), Some(&ResultCode::Success));
        let from_wire: Vec<Code> = wire.iter().filter_map(|&w| Code::from_proto(w)).collect();
        assert_eq!(from_wire, Code::ALL);
        assert_eq!(wire.len(), Code::ALL.len() + 1);
    }
}
