//! The callplus client engine for web pages.
//!
//! The same sans-IO engine the Rust client and the C ABI run (`callplus_session::client`),
//! compiled to WebAssembly. The page's JavaScript only moves bytes and carries out commands:
//!
//! 1. open a WebSocket to the server's device port; on `open` call `transportConnected(now)`;
//! 2. after every input, send each `pollTransmit()` as one binary message, hand each
//!    `pollEvent()` to the app, settle each `pollDriverEvent()` (a request's promise, or a
//!    reconnect on `transportStale`) and carry out each `pollMedia()` on `RTCPeerConnection`s;
//! 3. call `handleFrame(now, bytes)` for each binary message, `transportLost(now)` on `close`,
//!    `handleTimeout(now)` at `pollTimeout()`.
//!
//! `now` is `performance.timeOrigin + performance.now()`: monotonic, in milliseconds. Events,
//! driver events and media commands are JSON text (see `json.rs` for their shapes); operations
//! return the request id whose outcome comes back as a `requestCompleted` driver event, or
//! throw an error whose message is `{code, name, message}` as JSON.
//!
//! Natively the crate is an ordinary library ([`WebEngine`]), which is how its tests drive it
//! against a real server.

mod engine;
mod json;

pub use engine::{WebEngine, error_json};

#[cfg(target_arch = "wasm32")]
mod bindings;
