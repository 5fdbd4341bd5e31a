//! The client engine: what the SDK does on each API call and each inbound frame ([operations](docs/protocol.md#client-operations), [events](docs/protocol.md#events)).
//!
//! [`ClientEngine`] is a sans-IO state machine, one per device connection, in the style of
//! `quinn-proto` and `str0m`: the async client (`callplus-signal`) or a test feeds it transport
//! events, server frames and the time, and drains frames to send, events for the app and the
//! next wake-up time. See [`ClientEngine`] for the drive loop.
//!
//! - [`ClientConfig`]: device id, token, timeouts.
//! - [`ClientEngine`]: the engine; its operations return a [`RequestId`] whose outcome comes
//!   back as [`DriverEvent::RequestCompleted`].
//! - [`ClientEvent`]: what the app is told; [`ConnectionState`]: the connection's state.
//! - [`DriverEvent`]: what only the driver needs (request outcomes, a stale transport).
//! - [`MediaCommand`]: the engine's media decisions, for the driver's WebRTC stack.
//! - [`CallSession`]: one call as this device sees it.

mod config;
mod connection;
mod engine;
mod event;
mod inbound;
mod media;
mod ops;
mod requests;
mod session;
mod timers;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use config::{CallOptions, ClientConfig};
pub use engine::ClientEngine;
pub use event::{ClientEvent, ConnectionState, DriverEvent, RequestId};
pub use media::{MediaCommand, MediaPeer, offers_to};
pub use session::CallSession;
