//! The optional settings of a call started from C.

use std::ffi::c_char;

use callplus_session::PushConfig;
use callplus_session::client::CallOptions;

use crate::ffi::opt_str_arg;
use crate::result::callplus_result;

/// `ring_timeout_ms` value asking the server to ring until the call is answered or cancelled.
pub const CALLPLUS_RING_UNTIL_ANSWERED: i64 = -1;

/// Optional settings of `callplus_client_start_call_with_options` (and, without the ring timeout,
/// of `callplus_client_invite_with_options`; its push fields only, of
/// `callplus_client_hangup_with_options`).
///
/// Zero-initialise it and set only what you need; a zero or NULL field means "not set":
///
/// ```c
/// struct callplus_call_options options = {0};
/// options.ring_timeout_ms = 30000;
/// options.push_title = "Incoming call";
/// ```
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct callplus_call_options {
    /// Data for the callees (at most 4 KiB), or NULL.
    pub extra: *const c_char,
    /// How long the callees ring, in milliseconds: 0 for the server's default,
    /// `CALLPLUS_RING_UNTIL_ANSWERED` to ring until answered or cancelled.
    pub ring_timeout_ms: i64,
    /// Title of the push notification sent to callees with no connected device, or NULL.
    pub push_title: *const c_char,
    /// Body of that notification, or NULL.
    pub push_content: *const c_char,
    /// Free-form data delivered to the app with that notification, or NULL.
    pub push_custom_data: *const c_char,
    /// Send no push notification for this call.
    pub disable_push: bool,
}

/// The domain options of a C options struct (NULL: all defaults).
///
/// # Safety
/// `options` must be NULL or point to a readable `callplus_call_options` whose strings are
/// NULL or NUL-terminated.
pub(crate) unsafe fn call_options_arg(
    options: *const callplus_call_options,
) -> Result<CallOptions, callplus_result> {
    // SAFETY: forwarded contract.
    let Some(o) = (unsafe { options.as_ref() }) else { return Ok(CallOptions::default()) };
    // SAFETY: forwarded contract.
    let (extra, title, content, custom_data) = unsafe {
        (
            opt_str_arg(o.extra)?,
            opt_str_arg(o.push_title)?,
            opt_str_arg(o.push_content)?,
            opt_str_arg(o.push_custom_data)?,
        )
    };
    let ring_timeout_ms = match o.ring_timeout_ms {
        0 => None,
        CALLPLUS_RING_UNTIL_ANSWERED => Some(0),
        ms => Some(u32::try_from(ms).map_err(|_| callplus_result::ParamError)?),
    };
    let push_set = title.is_some() || content.is_some() || custom_data.is_some() || o.disable_push;
    let push = push_set.then(|| PushConfig {
        title: title.unwrap_or_default().to_owned(),
        content: content.unwrap_or_default().to_owned(),
        custom_data: custom_data.unwrap_or_default().to_owned(),
        disable_push: o.disable_push,
        ..PushConfig::default()
    });
    Ok(CallOptions { push, extra: extra.unwrap_or_default().to_owned(), ring_timeout_ms })
}

/// The extra data and push settings of an invitation (`callplus_client_invite_with_options`):
/// `ring_timeout_ms` set is `PARAM_ERROR` (the call's ring timeout was set when it started).
///
/// # Safety
/// As [`call_options_arg`].
pub(crate) unsafe fn invite_options_arg(
    options: *const callplus_call_options,
) -> Result<(Option<PushConfig>, String), callplus_result> {
    // SAFETY: forwarded contract.
    let CallOptions { push, extra, ring_timeout_ms } = unsafe { call_options_arg(options) }?;
    if ring_timeout_ms.is_some() {
        return Err(callplus_result::ParamError);
    }
    Ok((push, extra))
}

/// The push settings of a hangup (`callplus_client_hangup_with_options`): only the push fields
/// are read; `extra` or `ring_timeout_ms` set is `PARAM_ERROR` (they mean nothing to a hangup).
///
/// # Safety
/// As [`call_options_arg`].
pub(crate) unsafe fn hangup_push_arg(
    options: *const callplus_call_options,
) -> Result<Option<PushConfig>, callplus_result> {
    // SAFETY: forwarded contract.
    let CallOptions { push, extra, ring_timeout_ms } = unsafe { call_options_arg(options) }?;
    if !extra.is_empty() || ring_timeout_ms.is_some() {
        return Err(callplus_result::ParamError);
    }
    Ok(push)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::ptr::null;

    use super::*;

    fn zeroed() -> callplus_call_options {
        callplus_call_options {
            extra: null(),
            ring_timeout_ms: 0,
            push_title: null(),
            push_content: null(),
            push_custom_data: null(),
            disable_push: false,
        }
    }

    #[test]
    fn zeroed_or_null_options_are_the_defaults() {
        assert_eq!(unsafe { call_options_arg(null()) }, Ok(CallOptions::default()));
        assert_eq!(unsafe { call_options_arg(&zeroed()) }, Ok(CallOptions::default()));
    }

    #[test]
    fn every_field_reaches_the_domain_options() {
        let o = callplus_call_options {
            extra: c"hello".as_ptr(),
            ring_timeout_ms: 30_000,
            push_title: c"Incoming call".as_ptr(),
            push_content: c"alice is calling".as_ptr(),
            push_custom_data: c"{\"k\":1}".as_ptr(),
            disable_push: false,
        };
        let got = unsafe { call_options_arg(&o) }.unwrap();
        assert_eq!(got.extra, "hello");
        assert_eq!(got.ring_timeout_ms, Some(30_000));
        let push = got.push.unwrap();
        assert_eq!((push.title.as_str(), push.content.as_str()), ("Incoming call", "alice is calling"));
        assert_eq!(push.custom_data, "{\"k\":1}");
        assert!(!push.disable_push);

        let until_answered =
            callplus_call_options { ring_timeout_ms: CALLPLUS_RING_UNTIL_ANSWERED, ..zeroed() };
        assert_eq!(unsafe { call_options_arg(&until_answered) }.unwrap().ring_timeout_ms, Some(0));
        let silent = callplus_call_options { disable_push: true, ..zeroed() };
        assert!(unsafe { call_options_arg(&silent) }.unwrap().push.unwrap().disable_push);
    }

    #[test]
    fn bad_fields_are_refused() {
        let negative = callplus_call_options { ring_timeout_ms: -2, ..zeroed() };
        assert_eq!(unsafe { call_options_arg(&negative) }, Err(callplus_result::ParamError));
        let huge = callplus_call_options { ring_timeout_ms: i64::from(u32::MAX) + 1, ..zeroed() };
        assert_eq!(unsafe { call_options_arg(&huge) }, Err(callplus_result::ParamError));
        let bad_text = callplus_call_options { push_title: [0xffu8, 0].as_ptr().cast(), ..zeroed() };
        assert!(unsafe { call_options_arg(&bad_text) }.is_err());
    }

    #[test]
    fn a_hangup_reads_only_the_push_fields() {
        assert_eq!(unsafe { hangup_push_arg(null()) }, Ok(None));
        assert_eq!(unsafe { hangup_push_arg(&zeroed()) }, Ok(None));
        let o = callplus_call_options { push_title: c"Missed call".as_ptr(), ..zeroed() };
        let push = unsafe { hangup_push_arg(&o) }.unwrap().unwrap();
        assert_eq!((push.title.as_str(), push.disable_push), ("Missed call", false));
        let off = callplus_call_options { disable_push: true, ..zeroed() };
        assert!(unsafe { hangup_push_arg(&off) }.unwrap().unwrap().disable_push);
        for stray in [
            callplus_call_options { extra: c"x".as_ptr(), ..zeroed() },
            callplus_call_options { ring_timeout_ms: 5, ..zeroed() },
        ] {
            assert_eq!(unsafe { hangup_push_arg(&stray) }, Err(callplus_result::ParamError));
        }
    }

    #[test]
    fn an_invitation_reads_extra_and_push_but_no_ring_timeout() {
        assert_eq!(unsafe { invite_options_arg(null()) }, Ok((None, String::new())));
        let o = callplus_call_options { extra: c"x".as_ptr(), push_title: c"Join us".as_ptr(), ..zeroed() };
        let (push, extra) = unsafe { invite_options_arg(&o) }.unwrap();
        assert_eq!((push.map(|p| p.title), extra.as_str()), (Some("Join us".to_owned()), "x"));
        let timed = callplus_call_options { ring_timeout_ms: 5, ..zeroed() };
        assert_eq!(unsafe { invite_options_arg(&timed) }, Err(callplus_result::ParamError));
    }
}
