//! The switchboard: the server's brain over many devices and calls.
//!
//! It owns every device session (sequence numbers, acks, resume buffers, liveness), every live
//! call (through [`crate::call`]), presence, routing, busy detection and timers. It is sans-IO in
//! the style of `quinn-proto`: the network layer feeds it inputs with the current time and drains
//! its outputs.
//!
//! # Driving it
//! 1. When a transport connection delivers an authenticated `Hello`, call [`Switchboard::connect`];
//!    for every later frame call [`Switchboard::handle_frame`] (or
//!    [`Switchboard::handle_invalid_frame`] when the bytes did not convert); when the transport
//!    closes call [`Switchboard::connection_lost`].
//! 2. After each input, drain [`Switchboard::poll_output`] until it returns `None` and act on each
//!    output (write the frame to the connection, store the record, send the push, run the query
//!    and answer with [`Switchboard::complete_query`]).
//! 3. Call [`Switchboard::handle_timeout`] when the clock reaches [`Switchboard::poll_timeout`],
//!    then drain outputs again.
//!
//! Methods fall into four groups: getters (`&self`), inputs (`connect`, `handle_frame`,
//! `connection_lost`, `complete_query`, `handle_timeout`), operator commands (`shutdown`,
//! `end_recovered_calls`) and outputs (`poll_output`, `poll_timeout`).

mod config;
mod output;

pub use config::{BusyPolicy, DevicePolicy, SwitchboardConfig};
pub use output::{ConnId, OfflineEvent, Output, PushRequest, Query, QueryAnswer, QueryId};

pub use output::QueryResult;
