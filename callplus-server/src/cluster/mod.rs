//! Building blocks for running several nodes on one Redis: call-ownership leases and the
//! presence registry (see "Several nodes" in `docs/architecture.md`).
//!
//! With `serve --redis URL --node-id ID` the server keeps its devices in [`Presence`] (see
//! `server::presence`) and routes between nodes through their inboxes ([`Outbox`],
//! [`InboxReader`]; see `server::routing`), and a lost node's calls are ended by the one
//! survivor that wins its [`Takeovers`] lock. Users in a call are marked in
//! [`InCallMarks`] so a node of several sees a callee busy in another node's call. Each call is
//! held by a [`CallLeases`] lease whose fencing token tags the call's durable writes, so an owner
//! that paused past its loss and woke cannot overwrite what its successor wrote.

mod batch;
mod inbox;
mod incall;
mod lease;
pub mod message;
mod node;
mod presence;
mod takeover;

pub use batch::{Batch, Replies, Slot};
pub use inbox::{ALIVE_TTL, INBOX_MAXLEN, InboxReader, Outbox, READ_BLOCK, Received};
pub use incall::InCallMarks;
pub use lease::{CallLeases, LEASE_TTL, Lease, TakeOver};
pub use node::{ClusterConfig, NodeId, connect};
pub use presence::{DeviceLocation, Presence};
pub use takeover::{TAKEOVER_TTL, Takeovers};

/// What can go wrong talking to Redis or setting a node up.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Redis could not be reached or refused a command. Transient while Redis restarts: the
    /// connection manager reconnects by itself and the next call may succeed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// An inbox entry is not a node message this build can read.
    #[error("unreadable node message: {0}")]
    Message(String),
    /// A setting (URL, node id, TTL) cannot be used.
    #[error("invalid cluster setting: {0}")]
    InvalidArgument(String),
}

/// Milliseconds of a TTL as Redis takes them (`PX`), at least 1.
fn ttl_ms(ttl: std::time::Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}
