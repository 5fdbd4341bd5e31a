//! The callplus network layer.

pub mod cli;
pub mod client;
pub mod server;
pub mod storage;
pub mod token;
