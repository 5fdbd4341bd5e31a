//! The client engine: what the SDK does on each API call and each inbound frame (SPEC §3, §4).
//!
//! [`ClientEngine`] is a sans-IO state machine, one per device connection, in the style of
//! `quinn-proto` and `str0m`: the async client (`callplus-signal`) or a test feeds it transport
//! events, server frames and the time, and drains frames to send, events for the app and the
//! next wake-up time. See [`ClientEngine`] for the drive loop.
//!
//! - [`ClientConfig`]: device id, token, timeouts.
//! - [`ClientEngine`]: the engine; its operations return a [`RequestId`] whose outcome comes
//!   back as [`ClientEvent::RequestCompleted`].
//! - [`ClientEvent`]: what the app is told; [`ConnectionState`]: the connection's state.
//! - [`CallSession`]: one call as this device sees it.

mod config;
mod engine;
mod event;
mod ops;
mod requests;
mod session;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use config::{CallOptions, ClientConfig};
pub use engine::ClientEngine;
pub use event::{ClientEvent, ConnectionState, RequestId};
pub use session::CallSession;
