//! Plumbing of the C boundary: the panic boundary, opaque handles, and argument conversion.

use std::ffi::{CStr, CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::result::callplus_result;

/// What an exported function returns when its body panicked, or when an accessor is given a
/// NULL object: NULL, 0, false, or an enum's "none" value.
pub(crate) trait PanicDefault {
    /// The fallback value.
    fn panic_default() -> Self;
}

impl PanicDefault for callplus_result {
    fn panic_default() -> Self {
        callplus_result::Panic
    }
}

impl PanicDefault for () {
    fn panic_default() -> Self {}
}

impl PanicDefault for bool {
    fn panic_default() -> Self {
        false
    }
}

impl PanicDefault for i64 {
    fn panic_default() -> Self {
        0
    }
}

impl PanicDefault for u64 {
    fn panic_default() -> Self {
        0
    }
}

impl PanicDefault for u32 {
    fn panic_default() -> Self {
        0
    }
}

impl PanicDefault for f64 {
    fn panic_default() -> Self {
        0.0
    }
}

impl PanicDefault for usize {
    fn panic_default() -> Self {
        0
    }
}

impl<T> PanicDefault for *const T {
    fn panic_default() -> Self {
        std::ptr::null()
    }
}

impl<T> PanicDefault for *mut T {
    fn panic_default() -> Self {
        std::ptr::null_mut()
    }
}

/// Runs `f`, turning a panic into the return type's [`PanicDefault`]. Every exported function
/// body runs inside this, so no unwind ever crosses into C.
pub(crate) fn boundary<R: PanicDefault>(f: impl FnOnce() -> R) -> R {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| R::panic_default())
}

/// Runs `f` on the value behind `ptr` inside the panic boundary; NULL yields the fallback.
///
/// # Safety
/// As [`try_ref`].
pub(crate) unsafe fn with_ref<T: Opaque, R: PanicDefault>(ptr: *const T, f: impl FnOnce(&T::Rust) -> R) -> R {
    boundary(|| {
        // SAFETY: forwarded contract.
        match unsafe { try_ref(ptr) } {
            Ok(value) => f(value),
            Err(_) => R::panic_default(),
        }
    })
}

/// Like [`boundary`] for functions whose body computes a `Result` with a code as error.
pub(crate) fn boundary_result(f: impl FnOnce() -> Result<(), callplus_result>) -> callplus_result {
    boundary(|| match f() {
        Ok(()) => callplus_result::Ok,
        Err(code) => code,
    })
}

/// A C-visible opaque type and the Rust type behind its pointers.
///
/// # Safety
/// Pointers of type `*const Self` handed to C must always point at a `Self::Rust` created by
/// [`to_boxed`] (or borrowed from a live Rust value of that type).
pub(crate) unsafe trait Opaque {
    /// The Rust value a pointer of this type points at.
    type Rust;
}

/// Moves `value` to the heap and hands out an owning pointer, freed with [`free_boxed`].
pub(crate) fn to_boxed<T: Opaque>(value: T::Rust) -> *mut T {
    Box::into_raw(Box::new(value)).cast::<T>()
}

/// A borrowed pointer to a live Rust value, for accessors that hand out sub-objects.
pub(crate) fn to_const_ptr<T: Opaque>(value: &T::Rust) -> *const T {
    (value as *const T::Rust).cast::<T>()
}

/// Borrows the value behind `ptr`; `NullParameter` for NULL.
///
/// # Safety
/// `ptr` must be NULL or come from [`to_boxed`] / [`to_const_ptr`] for `T`, and the value must
/// outlive `'a`.
pub(crate) unsafe fn try_ref<'a, T: Opaque>(ptr: *const T) -> Result<&'a T::Rust, callplus_result> {
    // SAFETY: the caller guarantees `ptr` is NULL or valid for 'a.
    unsafe { ptr.cast::<T::Rust>().as_ref() }.ok_or(callplus_result::NullParameter)
}

/// Takes back ownership of a value handed out by [`to_boxed`]; NULL yields `None`.
///
/// # Safety
/// `ptr` must be NULL or come from [`to_boxed`] for `T`, and must not be used afterwards.
pub(crate) unsafe fn free_boxed<T: Opaque>(ptr: *mut T) -> Option<Box<T::Rust>> {
    if ptr.is_null() {
        None
    } else {
        // SAFETY: the caller guarantees `ptr` came from `Box::into_raw` for `T::Rust`.
        Some(unsafe { Box::from_raw(ptr.cast::<T::Rust>()) })
    }
}

/// Checks that an output pointer is not NULL.
pub(crate) fn check_out<T>(out: *mut T) -> Result<(), callplus_result> {
    if out.is_null() { Err(callplus_result::NullParameter) } else { Ok(()) }
}

/// Writes an output; call only after [`check_out`] and only on success.
///
/// # Safety
/// `out` must be valid for writes.
pub(crate) unsafe fn write_out<T>(out: *mut T, value: T) {
    // SAFETY: the caller guarantees `out` is non-NULL and valid for writes.
    unsafe { out.write(value) }
}

/// Reads a NUL-terminated UTF-8 string argument: `NullParameter` for NULL, `ParamError` when
/// it is not UTF-8.
///
/// # Safety
/// `ptr` must be NULL or point at a NUL-terminated string that lives for `'a`.
pub(crate) unsafe fn str_arg<'a>(ptr: *const c_char) -> Result<&'a str, callplus_result> {
    if ptr.is_null() {
        return Err(callplus_result::NullParameter);
    }
    // SAFETY: the caller guarantees a NUL-terminated string.
    let s = unsafe { CStr::from_ptr(ptr) };
    s.to_str().map_err(|_| callplus_result::ParamError)
}

/// Like [`str_arg`] with NULL meaning "absent".
///
/// # Safety
/// As [`str_arg`].
pub(crate) unsafe fn opt_str_arg<'a>(ptr: *const c_char) -> Result<Option<&'a str>, callplus_result> {
    if ptr.is_null() {
        Ok(None)
    } else {
        // SAFETY: forwarded contract.
        unsafe { str_arg(ptr) }.map(Some)
    }
}

/// Most strings accepted in one array argument: far above the protocol's list limits, so the
/// protocol reports its own code, and low enough that a garbage count is refused before any
/// large allocation.
pub(crate) const MAX_ARRAY_LEN: usize = 4096;

/// Reads an array of `len` string arguments. NULL with `len == 0` is an empty list.
///
/// # Safety
/// `ptr` must be NULL or point at `len` pointers, each NULL or a NUL-terminated string living
/// for `'a`.
pub(crate) unsafe fn str_array_arg<'a>(
    ptr: *const *const c_char,
    len: usize,
) -> Result<Vec<&'a str>, callplus_result> {
    if len == 0 {
        return Ok(Vec::new());
    }
    if ptr.is_null() {
        return Err(callplus_result::NullParameter);
    }
    if len > MAX_ARRAY_LEN {
        return Err(callplus_result::ParamError);
    }
    // SAFETY: the caller guarantees `len` readable pointers.
    let items = unsafe { std::slice::from_raw_parts(ptr, len) };
    items
        .iter()
        // SAFETY: each item is NULL or a valid string per the caller's contract.
        .map(|&p| unsafe { str_arg(p) })
        .collect()
}

/// A C string of `s`, cut at the first NUL (ids never contain one; free text might).
pub(crate) fn cstring(s: &str) -> CString {
    let end = s.find('\0').unwrap_or(s.len());
    CString::new(&s[..end]).unwrap_or_default()
}

/// The pointer of an optional C string, NULL when absent.
pub(crate) fn opt_ptr(s: Option<&CString>) -> *const c_char {
    s.map_or(std::ptr::null(), |s| s.as_ptr())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn cstring_cuts_at_nul() {
        assert_eq!(cstring("abc").as_bytes(), b"abc");
        assert_eq!(cstring("ab\0c").as_bytes(), b"ab");
        assert_eq!(cstring("").as_bytes(), b"");
    }

    #[test]
    fn string_arguments() {
        // SAFETY: NULL and valid literals.
        unsafe {
            assert_eq!(str_arg(std::ptr::null()), Err(callplus_result::NullParameter));
            assert_eq!(str_arg(c"bob".as_ptr()), Ok("bob"));
            let bad = [0xffu8, 0xfe, 0];
            assert_eq!(str_arg(bad.as_ptr().cast()), Err(callplus_result::ParamError));
            assert_eq!(opt_str_arg(std::ptr::null()), Ok(None));
            assert_eq!(str_array_arg(std::ptr::null(), 0), Ok(vec![]));
            assert_eq!(str_array_arg(std::ptr::null(), 2), Err(callplus_result::NullParameter));
            let items = [c"a".as_ptr(), std::ptr::null()];
            assert_eq!(str_array_arg(items.as_ptr(), 1), Ok(vec!["a"]));
            assert_eq!(str_array_arg(items.as_ptr(), 2), Err(callplus_result::NullParameter));
            assert_eq!(str_array_arg(items.as_ptr(), MAX_ARRAY_LEN + 1), Err(callplus_result::ParamError));
        }
    }

    #[test]
    fn panics_become_codes() {
        let r = boundary_result(|| panic!("boom"));
        assert_eq!(r, callplus_result::Panic);
        let p: *const u8 = boundary(|| panic!("boom"));
        assert!(p.is_null());
    }
}
