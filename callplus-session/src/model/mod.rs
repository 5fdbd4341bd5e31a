//! The domain model shared by the engines: ids, enums, snapshots and frames.

pub mod ids;
pub mod kinds;
pub mod message;
pub mod snapshot;
