//! The C ABI of the callplus client SDK.
//!
//! Everything a C (or Swift, Kotlin/JNI, C#, …) app needs to place and answer calls through a
//! callplus server: `callplus_client_connect`, the call operations, call records, and events
//! by polling (`callplus_client_poll_event`) or by callback
//! (`callplus_client_set_event_callback`). With `callplus_client_connect_with_options` and
//! `enable_media`, the client also carries the calls' audio and video: the app pushes its
//! encoded microphone and camera samples and receives remote frames through a sink callback. The header `include/callplus.h` is generated from
//! this crate by cbindgen and checked in; `cargo xtask codegen` regenerates it.
//!
//! Conventions (those of rustls-ffi):
//! - names are `callplus_<object>_<verb>`; objects are opaque pointers with `_free`
//!   functions; outputs are the last parameters (`*_out`) and are written only on success;
//! - every fallible function returns a `callplus_result`; `callplus_result_message` describes
//!   one;
//! - no function crashes on NULL, non-UTF-8 strings, unknown enum numbers or invalid ids: they
//!   are refused with a code; accessors given NULL return NULL / 0 / false / NONE;
//! - a Rust panic never crosses into C: it becomes `CALLPLUS_RESULT_PANIC`;
//! - strings returned as `const char *` are borrowed from the object they came from; strings
//!   the caller owns are `callplus_string`s, freed with `callplus_string_free`.
//!
//! This is the one crate of the workspace allowed `unsafe` code: the C boundary. All of it is
//! in pointer handling (`ffi.rs`) and in the exported functions' argument reading.
#![allow(non_camel_case_types)]

mod calls;
mod client;
mod client_options;
mod enums;
mod events;
mod feed;
mod ffi;
mod media;
mod options;
mod result;
mod server_clock;
mod sink;
mod stats;
mod string;

pub use calls::*;
pub use client::*;
pub use client_options::*;
pub use enums::*;
pub use events::*;
pub use media::*;
pub use options::*;
pub use result::*;
pub use sink::*;
pub use stats::*;
pub use string::*;

/// The library's version, e.g. "0.1.0" (static; never free it).
#[unsafe(no_mangle)]
pub extern "C" fn callplus_version() -> *const std::ffi::c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
