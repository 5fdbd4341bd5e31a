//! Strings and string lists the library hands out.

use std::ffi::{CString, c_char};

use crate::ffi::{Opaque, boundary, cstring, free_boxed, to_boxed, try_ref};

/// A string owned by the caller (a call id, a transaction id), handed out by the library.
/// Read it with `callplus_string_data` / `callplus_string_len`; free it with
/// `callplus_string_free`.
pub struct callplus_string {
    _private: [u8; 0],
}

// SAFETY: `callplus_string` pointers always point at a `CString` made by `to_boxed`.
unsafe impl Opaque for callplus_string {
    type Rust = CString;
}

/// Hands `s` to C as an owned `callplus_string`.
pub(crate) fn new_string(s: &str) -> *mut callplus_string {
    to_boxed::<callplus_string>(cstring(s))
}

/// The string's bytes: UTF-8, NUL-terminated, valid until `callplus_string_free`. NULL when
/// `s` is NULL.
///
/// # Safety
/// `s` must be NULL or a live `callplus_string`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_string_data(s: *const callplus_string) -> *const c_char {
    // SAFETY: forwarded contract.
    boundary(|| unsafe { try_ref(s) }.map_or(std::ptr::null(), |s| s.as_ptr()))
}

/// The string's length in bytes, without the NUL. 0 when `s` is NULL.
///
/// # Safety
/// `s` must be NULL or a live `callplus_string`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_string_len(s: *const callplus_string) -> usize {
    // SAFETY: forwarded contract.
    boundary(|| unsafe { try_ref(s) }.map_or(0, |s| s.as_bytes().len()))
}

/// Frees a string handed out by the library. NULL is ignored.
///
/// # Safety
/// `s` must be NULL or a `callplus_string` not freed before.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_string_free(s: *mut callplus_string) {
    // SAFETY: forwarded contract.
    boundary(|| drop(unsafe { free_boxed(s) }))
}

/// A list of strings owned by the caller (e.g. the busy users an invitation reports). Free it
/// with `callplus_string_list_free`.
pub struct callplus_string_list {
    _private: [u8; 0],
}

// SAFETY: `callplus_string_list` pointers always point at a `Vec<CString>` made by `to_boxed`.
unsafe impl Opaque for callplus_string_list {
    type Rust = Vec<CString>;
}

/// Hands `items` to C as an owned `callplus_string_list`.
pub(crate) fn new_string_list<S: AsRef<str>>(items: &[S]) -> *mut callplus_string_list {
    to_boxed::<callplus_string_list>(items.iter().map(|s| cstring(s.as_ref())).collect())
}

/// The number of strings in the list; 0 when `list` is NULL.
///
/// # Safety
/// `list` must be NULL or a live `callplus_string_list`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_string_list_len(list: *const callplus_string_list) -> usize {
    // SAFETY: forwarded contract.
    boundary(|| unsafe { try_ref(list) }.map_or(0, Vec::len))
}

/// The string at `index` (NUL-terminated UTF-8, valid until the list is freed); NULL when
/// `list` is NULL or `index` is out of range.
///
/// # Safety
/// `list` must be NULL or a live `callplus_string_list`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_string_list_get(
    list: *const callplus_string_list,
    index: usize,
) -> *const c_char {
    boundary(|| {
        // SAFETY: forwarded contract.
        let list = unsafe { try_ref(list) };
        list.ok().and_then(|l| l.get(index)).map_or(std::ptr::null(), |s| s.as_ptr())
    })
}

/// Frees a list handed out by the library. NULL is ignored.
///
/// # Safety
/// `list` must be NULL or a `callplus_string_list` not freed before.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn callplus_string_list_free(list: *mut callplus_string_list) {
    // SAFETY: forwarded contract.
    boundary(|| drop(unsafe { free_boxed(list) }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::ffi::CStr;

    use super::*;

    #[test]
    fn strings_and_lists() {
        // SAFETY: every pointer comes from the library or is NULL.
        unsafe {
            let s = new_string("c_123");
            assert_eq!(callplus_string_len(s), 5);
            assert_eq!(CStr::from_ptr(callplus_string_data(s)), c"c_123");
            callplus_string_free(s);
            callplus_string_free(std::ptr::null_mut());
            assert!(callplus_string_data(std::ptr::null()).is_null());
            assert_eq!(callplus_string_len(std::ptr::null()), 0);

            let l = new_string_list(&["a", "b"]);
            assert_eq!(callplus_string_list_len(l), 2);
            assert_eq!(CStr::from_ptr(callplus_string_list_get(l, 1)), c"b");
            assert!(callplus_string_list_get(l, 2).is_null());
            assert!(callplus_string_list_get(std::ptr::null(), 0).is_null());
            callplus_string_list_free(l);
            callplus_string_list_free(std::ptr::null_mut());
        }
    }
}
