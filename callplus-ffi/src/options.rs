//! The optional settings of a call started from C.

use std::ffi::c_char;

use callplus_session::PushConfig;
use callplus_session::client::CallOptions;

use crate::ffi::{MAX_ARRAY_LEN, opt_str_arg, str_arg};
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
///
/// The `push_*` fields and `disable_push` are the settings of the push notification a callee
/// with no connected device gets (the push webhook's `push_config`: title, content, template
/// id, iOS and Android settings, custom data); with all of them unset the call has none.
/// Every pointer in the struct, and in the structs it points to, is borrowed for the duration
/// of the call only.
///
/// Fields may be added at the end in later versions (`push_template_id`, `push_ios` and
/// `push_android` were): the library reads the struct of its own version, so build against the
/// header of the library you link, and start from `{0}`.
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
    /// Template id understood by the app's push service, or NULL.
    pub push_template_id: *const c_char,
    /// APNs settings of that notification, or NULL for none.
    pub push_ios: *const callplus_ios_push,
    /// Android settings of that notification, or NULL for none.
    pub push_android: *const callplus_android_push,
}

/// APNs settings of a push notification (`callplus_call_options.push_ios`), forwarded to the
/// push webhook as its `ios` object. Zero-initialise it; a NULL string is "".
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct callplus_ios_push {
    /// APNs thread id, for grouping notifications, or NULL.
    pub thread_id: *const c_char,
    /// APNs collapse id, or NULL.
    pub apns_collapse_id: *const c_char,
    /// Notification category, or NULL.
    pub category: *const c_char,
    /// Rich media URI, or NULL.
    pub rich_media_uri: *const c_char,
    /// Send it as a VoIP push (PushKit).
    pub voip: bool,
}

/// Android settings of a push notification (`callplus_call_options.push_android`), forwarded to
/// the push webhook as its `android` object. Zero-initialise it; a NULL string is "".
///
/// ```c
/// struct callplus_push_vendor_entry vendor[] = {{"huawei.importance", "high"}};
/// struct callplus_android_push android = {0};
/// android.channel_id = "calls";
/// android.vendor = vendor;
/// android.vendor_len = 1;
/// options.push_android = &android;
/// ```
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct callplus_android_push {
    /// Notification channel id, or NULL.
    pub channel_id: *const c_char,
    /// Collapse key / notification id, or NULL.
    pub collapse_key: *const c_char,
    /// `vendor_len` vendor-specific settings (e.g. "huawei.importance"), or NULL when
    /// `vendor_len` is 0. Keys must be distinct: they become a JSON object.
    pub vendor: *const callplus_push_vendor_entry,
    /// The number of entries of `vendor`.
    pub vendor_len: usize,
}

/// One vendor-specific setting of an Android push: a key and its value, both required
/// (NUL-terminated UTF-8).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct callplus_push_vendor_entry {
    /// The setting's name.
    pub key: *const c_char,
    /// Its value.
    pub value: *const c_char,
}

/// The domain options of a C options struct (NULL: all defaults).
///
/// # Safety
/// `options` must be NULL or point to a readable `callplus_call_options` whose strings are
/// NULL or NUL-terminated, and whose `push_ios` / `push_android` are NULL or readable as their
/// docs say.
pub(crate) unsafe fn call_options_arg(
    options: *const callplus_call_options,
) -> Result<CallOptions, callplus_result> {
    // SAFETY: forwarded contract.
    let Some(o) = (unsafe { options.as_ref() }) else { return Ok(CallOptions::default()) };
    // SAFETY: forwarded contract.
    let (extra, title, content, custom_data, template_id, ios, android) = unsafe {
        (
            opt_str_arg(o.extra)?,
            opt_str_arg(o.push_title)?,
            opt_str_arg(o.push_content)?,
            opt_str_arg(o.push_custom_data)?,
            opt_str_arg(o.push_template_id)?,
            o.push_ios.as_ref(),
            o.push_android.as_ref(),
        )
    };
    let ring_timeout_ms = match o.ring_timeout_ms {
        0 => None,
        CALLPLUS_RING_UNTIL_ANSWERED => Some(0),
        ms => Some(u32::try_from(ms).map_err(|_| callplus_result::ParamError)?),
    };
    let push_set = title.is_some()
        || content.is_some()
        || custom_data.is_some()
        || template_id.is_some()
        || ios.is_some()
        || android.is_some()
        || o.disable_push;
    let push = if push_set {
        let mut push = PushConfig {
            title: title.unwrap_or_default().to_owned(),
            content: content.unwrap_or_default().to_owned(),
            custom_data: custom_data.unwrap_or_default().to_owned(),
            template_id: template_id.unwrap_or_default().to_owned(),
            disable_push: o.disable_push,
            ..PushConfig::default()
        };
        if let Some(c) = ios {
            // SAFETY: forwarded contract.
            unsafe { set_ios(&mut push, c) }?;
        }
        if let Some(c) = android {
            // SAFETY: forwarded contract.
            unsafe { set_android(&mut push, c) }?;
        }
        Some(push)
    } else {
        None
    };
    Ok(CallOptions { push, extra: extra.unwrap_or_default().to_owned(), ring_timeout_ms })
}

/// An optional string field as an owned string ("" for NULL); `ParamError` when not UTF-8.
///
/// # Safety
/// As [`opt_str_arg`].
unsafe fn text(ptr: *const c_char) -> Result<String, callplus_result> {
    // SAFETY: forwarded contract.
    Ok(unsafe { opt_str_arg(ptr) }?.unwrap_or_default().to_owned())
}

/// Sets `push.ios` from its C struct (the struct present: `ios` set, even with every field
/// empty, as the Web SDK does for an `ios` object).
///
/// # Safety
/// The strings of `c` must be NULL or NUL-terminated.
unsafe fn set_ios(push: &mut PushConfig, c: &callplus_ios_push) -> Result<(), callplus_result> {
    // SAFETY: forwarded contract.
    let (thread_id, apns_collapse_id, category, rich_media_uri) = unsafe {
        (text(c.thread_id)?, text(c.apns_collapse_id)?, text(c.category)?, text(c.rich_media_uri)?)
    };
    let ios = push.ios.insert(Default::default());
    ios.thread_id = thread_id;
    ios.apns_collapse_id = apns_collapse_id;
    ios.category = category;
    ios.rich_media_uri = rich_media_uri;
    ios.voip = c.voip;
    Ok(())
}

/// Sets `push.android` from its C struct. The vendor entries become a map: a NULL array with
/// entries is `NullParameter`, as is a NULL key or value; more entries than any push can hold,
/// or a key given twice (one of them would be lost), is `ParamError`.
///
/// # Safety
/// The strings of `c` must be NULL or NUL-terminated; `c.vendor` NULL or `c.vendor_len`
/// readable entries whose strings are NULL or NUL-terminated.
unsafe fn set_android(push: &mut PushConfig, c: &callplus_android_push) -> Result<(), callplus_result> {
    // SAFETY: forwarded contract.
    let (channel_id, collapse_key) = unsafe { (text(c.channel_id)?, text(c.collapse_key)?) };
    let entries: &[callplus_push_vendor_entry] = match c.vendor_len {
        0 => &[],
        _ if c.vendor.is_null() => return Err(callplus_result::NullParameter),
        n if n > MAX_ARRAY_LEN => return Err(callplus_result::ParamError),
        // SAFETY: the caller guarantees `vendor_len` readable entries.
        n => unsafe { std::slice::from_raw_parts(c.vendor, n) },
    };
    let android = push.android.insert(Default::default());
    android.channel_id = channel_id;
    android.collapse_key = collapse_key;
    for entry in entries {
        // SAFETY: forwarded contract.
        let (key, value) = unsafe { (str_arg(entry.key)?, str_arg(entry.value)?) };
        if android.vendor.insert(key.to_owned(), value.to_owned()).is_some() {
            return Err(callplus_result::ParamError);
        }
    }
    Ok(())
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
            push_template_id: null(),
            push_ios: null(),
            push_android: null(),
        }
    }

    /// What `{0}` makes in C.
    fn zeroed_ios() -> callplus_ios_push {
        callplus_ios_push {
            thread_id: null(),
            apns_collapse_id: null(),
            category: null(),
            rich_media_uri: null(),
            voip: false,
        }
    }

    /// What `{0}` makes in C.
    fn zeroed_android() -> callplus_android_push {
        callplus_android_push { channel_id: null(), collapse_key: null(), vendor: null(), vendor_len: 0 }
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
            ..zeroed()
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

    #[test]
    fn template_ios_and_android_fields_reach_the_push_config_exactly() {
        let ios = callplus_ios_push {
            thread_id: c"calls".as_ptr(),
            apns_collapse_id: c"call-42".as_ptr(),
            category: c"INCOMING".as_ptr(),
            rich_media_uri: c"https://example.com/a.png".as_ptr(),
            voip: true,
        };
        let vendor = [
            callplus_push_vendor_entry { key: c"huawei.importance".as_ptr(), value: c"high".as_ptr() },
            callplus_push_vendor_entry { key: c"xiaomi.channel".as_ptr(), value: c"voip".as_ptr() },
        ];
        let android = callplus_android_push {
            channel_id: c"ring".as_ptr(),
            collapse_key: c"call-42".as_ptr(),
            vendor: vendor.as_ptr(),
            vendor_len: vendor.len(),
        };
        let o = callplus_call_options {
            push_title: c"Incoming call".as_ptr(),
            push_template_id: c"tpl-7".as_ptr(),
            push_ios: &ios,
            push_android: &android,
            ..zeroed()
        };
        let mut expected = PushConfig {
            title: "Incoming call".into(),
            template_id: "tpl-7".into(),
            ..PushConfig::default()
        };
        let e = expected.ios.insert(Default::default());
        e.thread_id = "calls".into();
        e.apns_collapse_id = "call-42".into();
        e.category = "INCOMING".into();
        e.rich_media_uri = "https://example.com/a.png".into();
        e.voip = true;
        let e = expected.android.insert(Default::default());
        e.channel_id = "ring".into();
        e.collapse_key = "call-42".into();
        e.vendor.insert("huawei.importance".into(), "high".into());
        e.vendor.insert("xiaomi.channel".into(), "voip".into());
        let push = |got: Result<CallOptions, callplus_result>| got.unwrap().push;
        assert_eq!(push(unsafe { call_options_arg(&o) }), Some(expected.clone()));
        // The same settings for an invitation and a hangup's cancellation.
        assert_eq!(unsafe { invite_options_arg(&o) }.unwrap().0, Some(expected.clone()));
        assert_eq!(unsafe { hangup_push_arg(&o) }.unwrap(), Some(expected));
    }

    #[test]
    fn each_new_push_field_alone_sends_push_settings() {
        let ios = zeroed_ios();
        let android = zeroed_android();
        let template = callplus_call_options { push_template_id: c"tpl".as_ptr(), ..zeroed() };
        let got = unsafe { call_options_arg(&template) }.unwrap().push.unwrap();
        assert_eq!(got, PushConfig { template_id: "tpl".into(), ..PushConfig::default() });
        // A zeroed struct is an empty `ios` / `android` object, not "no settings".
        let only_ios = callplus_call_options { push_ios: &ios, ..zeroed() };
        let got = unsafe { call_options_arg(&only_ios) }.unwrap().push.unwrap();
        assert_eq!((got.ios, got.android), (Some(Default::default()), None));
        let only_android = callplus_call_options { push_android: &android, ..zeroed() };
        let got = unsafe { call_options_arg(&only_android) }.unwrap().push.unwrap();
        assert_eq!((got.ios, got.android), (None, Some(Default::default())));
    }

    #[test]
    fn bad_new_push_fields_are_refused_like_the_others() {
        use callplus_result::{NullParameter, ParamError};
        let bad: *const c_char = [0xffu8, 0].as_ptr().cast();
        let arg = |o: &callplus_call_options| unsafe { call_options_arg(o) }.map(|_| ());

        // Not UTF-8: PARAM_ERROR, as for `push_title`.
        assert_eq!(arg(&callplus_call_options { push_title: bad, ..zeroed() }), Err(ParamError));
        assert_eq!(arg(&callplus_call_options { push_template_id: bad, ..zeroed() }), Err(ParamError));
        for ios in [
            callplus_ios_push { thread_id: bad, ..zeroed_ios() },
            callplus_ios_push { apns_collapse_id: bad, ..zeroed_ios() },
            callplus_ios_push { category: bad, ..zeroed_ios() },
            callplus_ios_push { rich_media_uri: bad, ..zeroed_ios() },
        ] {
            assert_eq!(arg(&callplus_call_options { push_ios: &ios, ..zeroed() }), Err(ParamError));
        }
        let bad_value = [callplus_push_vendor_entry { key: c"k".as_ptr(), value: bad }];
        for android in [
            callplus_android_push { channel_id: bad, ..zeroed_android() },
            callplus_android_push { collapse_key: bad, ..zeroed_android() },
            callplus_android_push { vendor: bad_value.as_ptr(), vendor_len: 1, ..zeroed_android() },
        ] {
            assert_eq!(arg(&callplus_call_options { push_android: &android, ..zeroed() }), Err(ParamError));
        }

        // The vendor array: NULL with entries, NULL keys or values, a key twice, a garbage count.
        let null_key = [callplus_push_vendor_entry { key: null(), value: c"v".as_ptr() }];
        let null_value = [callplus_push_vendor_entry { key: c"k".as_ptr(), value: null() }];
        let twice = [
            callplus_push_vendor_entry { key: c"k".as_ptr(), value: c"1".as_ptr() },
            callplus_push_vendor_entry { key: c"k".as_ptr(), value: c"2".as_ptr() },
        ];
        let refused = [
            (callplus_android_push { vendor: null(), vendor_len: 2, ..zeroed_android() }, NullParameter),
            (
                callplus_android_push { vendor: null_key.as_ptr(), vendor_len: 1, ..zeroed_android() },
                NullParameter,
            ),
            (
                callplus_android_push { vendor: null_value.as_ptr(), vendor_len: 1, ..zeroed_android() },
                NullParameter,
            ),
            (callplus_android_push { vendor: twice.as_ptr(), vendor_len: 2, ..zeroed_android() }, ParamError),
            (
                callplus_android_push {
                    vendor: twice.as_ptr(),
                    vendor_len: MAX_ARRAY_LEN + 1,
                    ..zeroed_android()
                },
                ParamError,
            ),
        ];
        for (android, code) in refused {
            assert_eq!(arg(&callplus_call_options { push_android: &android, ..zeroed() }), Err(code));
        }
        // NULL with no entries is an empty map.
        let none = callplus_android_push { vendor: null(), vendor_len: 0, ..zeroed_android() };
        assert_eq!(arg(&callplus_call_options { push_android: &none, ..zeroed() }), Ok(()));
    }
}
