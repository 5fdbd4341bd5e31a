//! Events: the `callplus_event` object, the per-client queue behind
//! `callplus_client_poll_event`, and the dispatcher thread behind event callbacks.
//!
//! With built-in media on, the media's events (first frames, status reports, audio levels,
//! errors) join the call events in the same queue, so an app reads everything in one place.

mod dispatch;
mod event;
mod kind;
#[cfg(test)]
mod tests;

pub use dispatch::callplus_event_callback;
pub(crate) use dispatch::{Events, callback};
pub(crate) use event::EventData;
pub use event::*;
pub use kind::{callplus_event_type, callplus_event_type_name};
