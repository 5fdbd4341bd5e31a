//! The result codes of the C API.

use std::ffi::{CStr, c_char};

use callplus_session::{Code, Error};

/// The result of every fallible function of this library.
///
/// `CALLPLUS_RESULT_OK` (0) is success. The 80xxx and 81xxx codes are the protocol's
/// (docs/protocol.md#result-codes: 80xxx are the CallPlus SDK codes, 81xxx the ones callplus
/// adds), so a code received from the server reaches C unchanged. The 89xxx codes belong to the
/// C API itself. `callplus_result_message` turns a code into an English sentence.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum callplus_result {
    /// Success.
    Ok = 0,
    /// A parameter is missing, malformed (e.g. not UTF-8) or out of range.
    ParamError = 80001,
    /// The user already has a current call.
    SessionExist = 80002,
    /// The user is not in the call (or there is no current call).
    NotInCall = 80003,
    /// Bad or disallowed media type.
    MediatypeInvalid = 80004,
    /// Video operation on an audio call.
    NotVideoCall = 80005,
    /// The media service is unavailable.
    RtcServiceUnavailable = 80006,
    /// Empty, too long or otherwise invalid user list.
    UserListInvalid = 80007,
    /// Bad call id.
    CallIdInvalid = 80008,
    /// Unknown or finished change-media-type transaction.
    TransactionIdInvalid = 80009,
    /// Bad user id.
    UserIdInvalid = 80010,
    /// A SINGLE call with more than one callee.
    SingleCallNotSupportMultiPerson = 80011,
    /// Camera closed.
    CameraClosed = 80100,
    /// Microphone closed.
    MicrophoneClosed = 80101,
    /// Media source or sink unusable.
    MediaResourceInvalid = 80102,
    /// Remote media could not be played.
    PlayMediaFailed = 80104,
    /// No video sink for the user.
    VideoViewNotSet = 80105,
    /// No connection to the server (never connected, disconnected, kicked, or the client's
    /// events are all taken after it stopped).
    NotConnected = 81001,
    /// Malformed token or bad signature.
    TokenInvalid = 81002,
    /// Expired token.
    TokenExpired = 81003,
    /// Unknown app key.
    AppUnknown = 81004,
    /// The user may not act on this call.
    Forbidden = 81005,
    /// No such call (or not visible to the user).
    CallNotFound = 81006,
    /// The call is full.
    CallFull = 81007,
    /// Too many requests.
    RateLimited = 81008,
    /// No answer in time.
    Timeout = 81009,
    /// Unexpected failure.
    Internal = 81010,
    /// Undecodable frame.
    FrameInvalid = 81011,
    /// Frame too large.
    MessageTooLarge = 81012,
    /// The call has ended.
    CallEnded = 81013,
    /// Not valid in the current state (also: a blocking function called from a thread of the
    /// client's own runtime, or `callplus_client_poll_event` while a callback is installed).
    InvalidState = 81014,
    /// Resume not possible.
    ResumeRejected = 81015,
    /// The user already has as many devices connected as the server allows.
    TooManyDevices = 81016,
    /// A required pointer argument was NULL.
    NullParameter = 89001,
    /// The library hit a bug (a Rust panic was caught at the C boundary). The object involved
    /// may be in an unusable state; free it.
    Panic = 89002,
    /// `callplus_client_poll_event` waited `timeout_ms` and no event came.
    NoEvent = 89003,
}

impl callplus_result {
    /// The C code of a protocol code: the one with the same number (every protocol code has
    /// one; the tests check the C enum against `Code::ALL`).
    pub(crate) fn from_code(code: Code) -> callplus_result {
        callplus_result::from_number(code.number()).unwrap_or(callplus_result::Internal)
    }

    /// The code of a number, if it is one of ours.
    pub(crate) fn from_number(n: i32) -> Option<callplus_result> {
        ALL.iter().copied().find(|r| *r as i32 == n)
    }

    /// The English sentence of this code: the protocol table's message for a protocol code,
    /// the C API's own for the others.
    pub(crate) fn message(self) -> &'static CStr {
        use callplus_result as R;
        match self {
            R::Ok => c"success",
            R::NullParameter => c"a required pointer argument was NULL",
            R::Panic => c"internal error: the library panicked",
            R::NoEvent => c"no event within the timeout",
            protocol => match Code::from_number(protocol as i32) {
                Some(code) => code.describe_c(),
                None => c"unknown result code",
            },
        }
    }
}

/// Every code, for lookups by number.
pub(crate) const ALL: [callplus_result; 36] = {
    use callplus_result as R;
    [
        R::Ok,
        R::ParamError,
        R::SessionExist,
        R::NotInCall,
        R::MediatypeInvalid,
        R::NotVideoCall,
        R::RtcServiceUnavailable,
        R::UserListInvalid,
        R::CallIdInvalid,
        R::TransactionIdInvalid,
        R::UserIdInvalid,
        R::SingleCallNotSupportMultiPerson,
        R::CameraClosed,
        R::MicrophoneClosed,
        R::MediaResourceInvalid,
        R::PlayMediaFailed,
        R::VideoViewNotSet,
        R::NotConnected,
        R::TokenInvalid,
        R::TokenExpired,
        R::AppUnknown,
        R::Forbidden,
        R::CallNotFound,
        R::CallFull,
        R::RateLimited,
        R::Timeout,
        R::Internal,
        R::FrameInvalid,
        R::MessageTooLarge,
        R::CallEnded,
        R::InvalidState,
        R::ResumeRejected,
        R::TooManyDevices,
        R::NullParameter,
        R::Panic,
        R::NoEvent,
    ]
};

impl From<&Error> for callplus_result {
    fn from(e: &Error) -> Self {
        callplus_result::from_code(e.code)
    }
}

impl From<Error> for callplus_result {
    fn from(e: Error) -> Self {
        callplus_result::from_code(e.code)
    }
}

/// A static, NUL-terminated English description of `result` (a `callplus_result` value, or
/// any other number: unknown numbers get "unknown result code"). Never NULL; never free it.
#[unsafe(no_mangle)]
pub extern "C" fn callplus_result_message(result: u32) -> *const c_char {
    let message = match i32::try_from(result).ok().and_then(callplus_result::from_number) {
        Some(r) => r.message(),
        None => c"unknown result code",
    };
    message.as_ptr()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_the_protocol() {
        // Every protocol code maps to the C code with the same number, and back.
        let mut seen = 0;
        for n in 80_000..82_000 {
            if let Some(code) = Code::from_number(n)
                && code.number() == n
            {
                let r = callplus_result::from_code(code);
                assert_eq!(r as i32, n, "{code:?}");
                assert_eq!(callplus_result::from_number(n), Some(r));
                seen += 1;
            }
        }
        assert_eq!(seen, 32);
        assert_eq!(callplus_result::ParamError as i32, 80001);
        assert_eq!(callplus_result::SingleCallNotSupportMultiPerson as i32, 80011);
        assert_eq!(callplus_result::VideoViewNotSet as i32, 80105);
        assert_eq!(callplus_result::NotConnected as i32, 81001);
    }

    #[test]
    fn the_c_enum_is_the_protocol_table() {
        // Every row of the table has the C code with its number, its name and its message,
        // and every C code is either a row of the table or one of the C API's own.
        for &code in Code::ALL {
            let r = callplus_result::from_code(code);
            assert_eq!(r as i32, code.number(), "{code:?}");
            assert_eq!(format!("{r:?}"), format!("{:?}", code.to_proto()), "{code:?}");
            assert_eq!(r.message(), code.describe_c());
            assert_eq!(Code::from_number(r as i32), Some(code));
        }
        let own = [
            callplus_result::Ok,
            callplus_result::NullParameter,
            callplus_result::Panic,
            callplus_result::NoEvent,
        ];
        assert_eq!(ALL.len(), Code::ALL.len() + own.len());
        for r in ALL {
            let n = r as i32;
            assert!(
                own.contains(&r) || Code::ALL.iter().any(|c| c.number() == n),
                "{r:?} is neither a protocol code nor one of the C API's own"
            );
        }
    }

    #[test]
    fn every_code_has_a_distinct_message() {
        let mut messages = std::collections::HashSet::new();
        for r in ALL {
            assert!(messages.insert(r.message()), "{r:?}");
            let p = callplus_result_message(r as u32);
            // SAFETY: the function returns a static C string.
            let s = unsafe { CStr::from_ptr(p) };
            assert_eq!(s, r.message());
        }
        // SAFETY: as above.
        let unknown = unsafe { CStr::from_ptr(callplus_result_message(12345)) };
        assert_eq!(unknown, c"unknown result code");
        // SAFETY: as above.
        let huge = unsafe { CStr::from_ptr(callplus_result_message(u32::MAX)) };
        assert_eq!(huge, c"unknown result code");
    }
}
